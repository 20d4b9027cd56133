//! `finworker reconcile | ledger … | webhooks …`: the transaction lifecycle from the command
//! line. These run in the command's own process (under a fence of their own), with the same
//! rate limits and breakers as the daemon's jobs, and print what they did.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{LedgerCommand, WebhooksCommand, load};
use crate::{
    context::AppContext,
    gateway::ReturnKind,
    lifecycle::{bic, guard, ledger, reconcile as rec, sweeps},
    queue::fence::Fence,
    reports::Format,
    startup,
    webhooks::replay,
};

/// A fence of this command's own (its writes are checked like a job attempt's).
fn cli_fence(what: &str) -> Fence {
    Fence::new(format!("cli:{what}:{}", Uuid::now_v7()), 1)
}

pub(super) async fn reconcile(run: Option<Uuid>) -> anyhow::Result<()> {
    let ctx = startup::build_context(load().await?).await?;
    let p = rec::pass(
        &ctx,
        &cli_fence("reconcile"),
        run,
        Duration::from_secs(3600),
    )
    .await?;
    println!(
        "looked up {} attempts at the gateway; {} newly flagged past their hard age",
        p.looked_up, p.flagged
    );
    for (status, n) in p.open {
        println!("  still {status:<14} {n:>8}");
    }
    Ok(())
}

fn accounts(ctx: &AppContext, account: Option<String>) -> anyhow::Result<Vec<String>> {
    match account {
        Some(a) if ctx.accounts.get(&a).is_none() => {
            anyhow::bail!("no gateway account `{a}` is configured")
        }
        Some(a) => Ok(vec![a]),
        None => Ok(ctx.accounts.names()),
    }
}

fn print_sync(r: &ledger::SyncRow) {
    let names = if r.kind == "ledger" {
        [
            "matched",
            "corrected",
            "repaired",
            "refused",
            "missing locally",
            "missing remotely",
        ]
    } else {
        [
            "already known",
            "new",
            "codes back-filled",
            "refused",
            "unmatched",
            "-",
        ]
    };
    println!(
        "{} sync {} of {} {}..{}: {}{} — {} pages, {} records",
        r.kind,
        r.id,
        r.account,
        r.from_date,
        r.to_date,
        r.status,
        r.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        r.pages,
        r.seen
    );
    let values = [
        r.matched,
        r.corrected,
        r.repaired,
        r.refused,
        r.missing_locally,
        r.missing_remotely,
    ];
    for (n, v) in names.iter().zip(values) {
        if *n != "-" {
            println!("  {n:<18} {v:>8}");
        }
    }
}

pub(super) async fn ledger_command(cmd: LedgerCommand) -> anyhow::Result<()> {
    let ctx = startup::build_context(load().await?).await?;
    match cmd {
        LedgerCommand::Sync {
            from,
            to,
            account,
            format,
        } => {
            let Some(format) = Format::parse(&format) else {
                anyhow::bail!("--format {format}: use csv or xlsx");
            };
            if from > to {
                anyhow::bail!("--from {from} is after --to {to}");
            }
            for a in accounts(&ctx, account)? {
                let r = ledger::sync(
                    &ctx,
                    &cli_fence("ledger"),
                    Uuid::now_v7(),
                    &a,
                    from,
                    to,
                    "cli",
                    format,
                )
                .await?;
                print_sync(&r);
                if let Some(id) = r.report_id {
                    match crate::reports::signed_link(&ctx.settings.reports, id, None) {
                        Some((url, _)) => println!("  report: {url}"),
                        None => println!("  report {id} (set reports.link_secret for a link)"),
                    }
                }
            }
        }
        LedgerCommand::Sweep { from, to, account } => {
            let to = to.unwrap_or(from);
            for a in accounts(&ctx, account)? {
                for kind in [ReturnKind::Chargebacks, ReturnKind::RetrievalRequests] {
                    let r = sweeps::sweep(
                        &ctx,
                        &cli_fence("sweep"),
                        Uuid::now_v7(),
                        &a,
                        kind,
                        (from, to),
                        "cli",
                    )
                    .await?;
                    print_sync(&r);
                }
                if guard::check(&ctx, &a).await? {
                    println!("  account {a} is HELD by the chargeback-rate guard");
                }
            }
        }
        LedgerCommand::List { limit, json } => {
            let rows = ledger::list(&ctx, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in &rows {
                    print_sync(r);
                }
            }
        }
        LedgerCommand::BicRule => {
            let d = bic::run(&ctx).await?;
            if d.is_empty() {
                println!("no BIC had enough debits in the window to be judged");
            }
            for x in d {
                println!(
                    "{:<12} {:>6} debits {:>6} chargebacks {:>6.1}%  {}",
                    x.bic,
                    x.transactions,
                    x.chargebacks,
                    x.rate * 100.0,
                    match (x.blacklisted, x.added) {
                        (true, true) => "blacklisted now",
                        (true, false) => "blacklisted (already)",
                        _ => "ok",
                    }
                );
            }
        }
    }
    Ok(())
}

/// RFC 3339, or a duration ago (`2h`).
fn since(v: Option<String>) -> anyhow::Result<Option<DateTime<Utc>>> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(t) = DateTime::parse_from_rfc3339(&v) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    let d = humantime::parse_duration(&v)
        .map_err(|_| anyhow::anyhow!("--since {v}: give RFC 3339 or a duration such as 2h"))?;
    Ok(Some(Utc::now() - chrono::Duration::from_std(d)?))
}

pub(super) async fn webhooks_command(cmd: WebhooksCommand) -> anyhow::Result<()> {
    let ctx = startup::build_context(load().await?).await?;
    match cmd {
        WebhooksCommand::List {
            status,
            since: s,
            limit,
            json,
        } => {
            let rows = replay::list(&ctx, status.as_deref(), since(s)?, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            for r in rows {
                println!(
                    "{:>8} {} {:<8} {:<9} {:<10} {:<18} {:<34} {}{}",
                    r.id,
                    r.received_at.format("%Y-%m-%d %H:%M:%S"),
                    r.account,
                    r.verdict,
                    r.state,
                    r.kind.as_deref().unwrap_or("-"),
                    r.unique_id.as_deref().unwrap_or("-"),
                    r.reason.or(r.error).unwrap_or_default(),
                    if r.repeats > 0 {
                        format!(" (+{} repeats)", r.repeats)
                    } else {
                        String::new()
                    }
                );
            }
        }
        WebhooksCommand::Replay {
            ids,
            since: s,
            status,
        } => {
            let mut ids = ids;
            if let Some(t) = since(s)? {
                let status = status.unwrap_or_else(|| "failed".into());
                ids.extend(
                    replay::list(&ctx, Some(&status), Some(t), i64::MAX)
                        .await?
                        .into_iter()
                        .map(|r| r.id),
                );
            }
            if ids.is_empty() {
                anyhow::bail!("nothing to replay: give delivery ids or --since");
            }
            for (id, r) in replay::replay(&ctx, &ids).await? {
                println!("{id:>8} {}", serde_json::to_string(&r)?);
            }
        }
    }
    Ok(())
}
