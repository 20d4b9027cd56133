//! `finworker reports …`: finance downloads from the command line.

use std::time::Duration;

use super::{ReportsCommand, load};
use crate::jobs::finance_report::FinanceKind;
use crate::{jobs, startup};

pub(super) async fn reports_command(cmd: ReportsCommand) -> anyhow::Result<()> {
    let ctx = startup::build_context(load().await?).await?;
    match cmd {
        ReportsCommand::Create {
            upload,
            from,
            to,
            format,
        } => {
            let Some(format) = crate::reports::Format::parse(&format) else {
                anyhow::bail!("--format {format}: use csv or xlsx");
            };
            if upload.is_none() && from.is_none() && to.is_none() {
                anyhow::bail!("give --upload or --from/--to");
            }
            let id = jobs::vop_report::enqueue(
                &ctx,
                jobs::VopReport {
                    report_id: None,
                    upload_id: upload,
                    from,
                    to,
                    format,
                },
            )
            .await?;
            wait_and_link(&ctx, id).await?;
        }
        ReportsCommand::Billing { run, format } => {
            let format = parse_format(&format)?;
            let id = jobs::finance_report::enqueue(
                &ctx,
                jobs::FinanceReport {
                    run_id: Some(run),
                    ..jobs::FinanceReport::new(FinanceKind::BillingRun, format)
                },
            )
            .await?;
            wait_and_link(&ctx, id).await?;
        }
        ReportsCommand::Returns {
            from,
            to,
            account,
            format,
        } => {
            let format = parse_format(&format)?;
            if from > to {
                anyhow::bail!("--from {from} is after --to {to}");
            }
            let id = jobs::finance_report::enqueue(
                &ctx,
                jobs::FinanceReport {
                    from: Some(from),
                    to: Some(to),
                    account,
                    ..jobs::FinanceReport::new(FinanceKind::Returns, format)
                },
            )
            .await?;
            wait_and_link(&ctx, id).await?;
        }
        ReportsCommand::CleanDebtors {
            quiet_days,
            limit,
            strict,
            account,
            full_iban,
            format,
        } => {
            let format = parse_format(&format)?;
            let id = jobs::finance_report::enqueue(
                &ctx,
                jobs::FinanceReport {
                    quiet_days: Some(quiet_days),
                    limit: Some(limit),
                    strict,
                    account,
                    full_iban,
                    ..jobs::FinanceReport::new(FinanceKind::CleanDebtors, format)
                },
            )
            .await?;
            wait_and_link(&ctx, id).await?;
        }
        ReportsCommand::List { limit } => {
            for r in crate::ops::reports(&ctx, limit).await? {
                let rec = &r.report;
                println!(
                    "{}  {:<13} {:<4} {:<8} {:>8} rows  {}  {}",
                    rec.id,
                    rec.kind,
                    rec.format,
                    rec.status,
                    rec.rows.map_or("-".into(), |n| n.to_string()),
                    rec.created_at.format("%Y-%m-%d %H:%M"),
                    r.download_url.as_deref().unwrap_or("")
                );
            }
        }
        ReportsCommand::Show { id } => {
            let r = crate::reports::get(&ctx.db, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no report {id}"))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        ReportsCommand::Link { id, ttl } => {
            let r = crate::reports::get(&ctx.db, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no report {id}"))?;
            if r.status != "ready" {
                eprintln!(
                    "note: report {id} is {}; the link works once it is ready",
                    r.status
                );
            }
            println!("{}", report_link(&ctx, id, ttl)?);
        }
    }
    Ok(())
}

fn parse_format(f: &str) -> anyhow::Result<crate::reports::Format> {
    crate::reports::Format::parse(f).ok_or_else(|| anyhow::anyhow!("--format {f}: use csv or xlsx"))
}

/// Waits until the workers wrote report `id`, then prints its signed link.
async fn wait_and_link(ctx: &crate::context::AppContext, id: uuid::Uuid) -> anyhow::Result<()> {
    eprintln!("report {id} enqueued; waiting for workers");
    loop {
        match crate::reports::get(&ctx.db, id).await? {
            Some(r) if r.status == "ready" => break,
            Some(r) if r.status == "failed" => {
                anyhow::bail!("report {id} failed: {}", r.error.unwrap_or_default())
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    println!("{}", report_link(ctx, id, None)?);
    Ok(())
}

/// A signed link to a report, valid for `ttl` (default `reports.link_ttl`).
fn report_link(
    ctx: &crate::context::AppContext,
    id: uuid::Uuid,
    ttl: Option<Duration>,
) -> anyhow::Result<String> {
    crate::reports::signed_link(&ctx.settings.reports, id, ttl)
        .map(|(url, _)| url)
        .ok_or_else(|| {
            anyhow::anyhow!("reports.link_secret is not set (FINWORKER__REPORTS__LINK_SECRET)")
        })
}
