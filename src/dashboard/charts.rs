//! Small inline SVG charts: no script, no chart library, readable without colour.

use maud::{Markup, PreEscaped, html};

/// Bars of `values` (oldest first) in a `w`×`h` box, with the peak as a title.
pub fn bars(values: &[i64], w: u32, h: u32, label: &str) -> Markup {
    let peak = values.iter().copied().max().unwrap_or(0).max(1);
    let n = values.len().max(1) as f64;
    let bw = f64::from(w) / n;
    let mut rects = String::new();
    for (i, v) in values.iter().enumerate() {
        let bh = (*v as f64 / peak as f64 * f64::from(h - 2)).round();
        if bh > 0.0 {
            rects.push_str(&format!(
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
                i as f64 * bw,
                f64::from(h) - bh,
                (bw - 0.5).max(0.5),
                bh
            ));
        }
    }
    html! {
        svg class="chart" width=(w) height=(h) viewBox={"0 0 " (w) " " (h)} role="img"
            aria-label={(label) ", peak " (peak)} {
            title { (label) ", peak " (peak) }
            line x1="0" y1=(h - 1) x2=(w) y2=(h - 1) class="axis" {}
            (PreEscaped(rects))
        }
    }
}

/// A progress bar: `done` of `total`, with the percentage as text.
pub fn progress(done: i64, total: i64, label: &str) -> Markup {
    let pct = if total > 0 {
        (done as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
    } else {
        0.0
    };
    html! {
        div class="progress" role="progressbar" aria-label=(label)
            aria-valuenow=(format!("{pct:.0}")) aria-valuemin="0" aria-valuemax="100" {
            div class="fill" style=(format!("width:{pct:.1}%")) {}
            span { (format!("{pct:.0}%")) " · " (done) " / " (total) }
        }
    }
}
