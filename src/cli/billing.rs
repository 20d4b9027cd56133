//! `finworker accounts|billing|blacklist …`: billing from the command line.

use std::time::Duration;

use super::{AccountsCommand, BillingCommand, BlacklistCommand, load};
use crate::{
    billing::{accounts, blacklist, run},
    jobs::{self, billing::RequestedBy},
    money::format_minor,
    startup,
};

pub(super) async fn accounts_command(cmd: AccountsCommand) -> anyhow::Result<()> {
    let ctx = startup::build_context(load().await?).await?;
    match cmd {
        AccountsCommand::List { json } => {
            accounts::sync(&ctx.db, &ctx.settings.gateway).await?;
            let rows = accounts::list(&ctx.db).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if rows.is_empty() {
                println!("no gateway accounts: declare them in [gateway.accounts.<name>]");
            }
            for a in &rows {
                if let Some(h) = &a.hold_reason {
                    println!("{:<16} HELD: {h}", a.name);
                }
            }
            for a in rows {
                println!(
                    "{:<16} {:<8} {:<8} {} user {} password from ${} {} {} req/s, month {} / {}",
                    a.name,
                    a.gateway,
                    if a.enabled { "enabled" } else { "disabled" },
                    a.endpoint,
                    a.username,
                    a.password_env,
                    a.currency,
                    a.rate_limit,
                    format_minor(a.month_committed_minor),
                    a.monthly_cap_minor
                        .map(format_minor)
                        .unwrap_or_else(|| "no cap".into()),
                );
            }
        }
        AccountsCommand::Release { name } => {
            if !crate::lifecycle::guard::release(&ctx, &name).await? {
                println!("account {name} was not held");
                return Ok(());
            }
            println!("account {name} released");
            for r in run::list(&ctx.db, 10_000).await? {
                if r.account == name
                    && r.status == "paused"
                    && r.paused_by.as_deref() == Some("chargeback_guard")
                {
                    let r = run::control(&ctx.db, r.id, "resume").await?;
                    if r.status == "running" {
                        jobs::billing_batch::fan_out(&ctx, r.id).await?;
                    } else {
                        jobs::billing::restart_selection(&ctx, &r).await?;
                    }
                    println!("resumed run {}", r.id);
                }
            }
        }
    }
    Ok(())
}

fn print_run(r: &run::RunRow, totals: &serde_json::Value) {
    println!(
        "run {} ({}{}) upload {} account {} model {}: {}{}",
        r.id,
        r.source,
        if r.dry_run { ", dry run" } else { "" },
        r.upload_id
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into()),
        r.account,
        r.model,
        r.status,
        r.pause_reason
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default(),
    );
    println!("  debtors: {}", totals["items"]);
    let show = |title: &str, key: &str| {
        if let Some(m) = totals[key].as_object()
            && !m.is_empty()
        {
            println!("  {title}:");
            for (k, v) in m {
                println!(
                    "    {k:<22} {:>8}  {:>14}",
                    v["count"],
                    format_minor(v["amount_minor"].as_i64().unwrap_or(0))
                );
            }
        }
    };
    show("debtors by state", "by_state");
    show("debits by status", "attempts_by_status");
    show("excluded by reason", "excluded_by_reason");
}

pub(super) async fn billing_command(cmd: BillingCommand) -> anyhow::Result<()> {
    let ctx = startup::build_context(load().await?).await?;
    let show = |id| {
        let ctx = ctx.clone();
        async move {
            let r = run::get(&ctx.db, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no billing run {id}"))?;
            let mut tx = ctx.db.begin().await?;
            let t = run::totals(&mut tx, id).await?;
            tx.commit().await?;
            print_run(&r, &t);
            anyhow::Ok(r)
        }
    };
    match cmd {
        BillingCommand::Start {
            upload,
            account,
            model,
            dry_run,
            skip_chargeback_check,
            cap_minor,
            no_wait,
        } => {
            let id = jobs::billing::enqueue(
                &ctx,
                jobs::Billing {
                    upload_id: upload,
                    account,
                    model,
                    dry_run,
                    skip_chargeback_check,
                    cap_minor,
                    run_id: None,
                    requested_by: RequestedBy::Cli,
                },
            )
            .await?;
            println!("billing run {id} enqueued");
            if no_wait {
                return Ok(());
            }
            eprintln!("waiting for workers (Ctrl-C stops waiting, not the run)");
            loop {
                match run::get(&ctx.db, id).await? {
                    Some(r) if matches!(r.status.as_str(), "completed" | "cancelled") => break,
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
            show(id).await?;
        }
        BillingCommand::List { limit } => {
            for r in run::list(&ctx.db, limit).await? {
                println!(
                    "{} {:<10} {:<9} {:<10} {:<8} debtors {:>8} committed {:>14} created {}",
                    r.id,
                    r.status,
                    r.source,
                    r.account,
                    r.model,
                    r.items_total,
                    format_minor(r.committed_minor),
                    r.created_at.format("%Y-%m-%d %H:%M:%S")
                );
            }
        }
        BillingCommand::Show { run: id } => {
            show(id).await?;
        }
        BillingCommand::Pause { run: id } => {
            run::control(&ctx.db, id, "pause").await?;
            show(id).await?;
        }
        BillingCommand::Resume { run: id } => {
            crate::ops::run_control(&ctx, id, "resume").await?;
            show(id).await?;
        }
        BillingCommand::Cancel { run: id } => {
            run::control(&ctx.db, id, "cancel").await?;
            show(id).await?;
        }
        BillingCommand::Void { transaction_id: t } => {
            use crate::billing::void::{self, Voided};
            match void::void(&ctx, &t).await? {
                Voided::Voided {
                    void_id,
                    sent: true,
                } => {
                    println!("{t}: voided at the gateway (void {void_id})");
                }
                Voided::Voided {
                    void_id,
                    sent: false,
                } => {
                    println!("{t}: already voided at the gateway (void {void_id}); nothing sent");
                }
                Voided::NotVoidable(s) => {
                    anyhow::bail!("{t} is {s} at the gateway: there is nothing to void")
                }
                Voided::NotAtGateway => anyhow::bail!(
                    "the gateway has no record of {t}: nothing was taken, and reconciliation resolves the attempt"
                ),
                Voided::TooOld(at) => anyhow::bail!(
                    "{t} was made {}, longer ago than billing.void_window: not voided (refund it instead)",
                    at.format("%Y-%m-%d %H:%M UTC")
                ),
                Voided::Refused(m) => anyhow::bail!("the gateway refused to void {t}: {m}"),
                Voided::NotAsked(m) => anyhow::bail!(
                    "the gateway could not be asked about {t} ({m}); nothing was voided: try again later"
                ),
                Voided::Unknown(m) => anyhow::bail!(
                    "the void of {t} was sent but its outcome is unknown ({m}); run the command again: it asks the gateway before sending anything"
                ),
            }
        }
    }
    Ok(())
}

pub(super) async fn blacklist_command(cmd: BlacklistCommand) -> anyhow::Result<()> {
    let ctx = startup::build_context(load().await?).await?;
    match cmd {
        BlacklistCommand::Add {
            iban,
            name,
            email,
            bic,
            prefix,
            reason,
        } => {
            let entry = match (iban, name, email, bic) {
                (Some(v), None, None, None) => blacklist::Entry::Iban(v),
                (None, Some(v), None, None) => blacklist::Entry::Name(v),
                (None, None, Some(v), None) => blacklist::Entry::Email(v),
                (None, None, None, Some(v)) => blacklist::Entry::Bic(v),
                _ => anyhow::bail!("give exactly one of --iban, --name, --email, --bic"),
            };
            let added = blacklist::add(&ctx, &entry, prefix, &reason, "ops").await?;
            println!("{}", if added { "added" } else { "already listed" });
        }
        BlacklistCommand::List => {
            for e in blacklist::list(&ctx.db).await? {
                println!(
                    "{:<6} {:<7} {:<40} {} ({}, {})",
                    e.kind,
                    e.r#match,
                    e.shown,
                    e.reason,
                    e.source,
                    e.created_at.format("%Y-%m-%d %H:%M")
                );
            }
        }
    }
    Ok(())
}
