//! `vop` (ProcessVopJob): name (VOP) and account (BAV) checks of the valid debtors of one
//! upload chunk.
//!
//! - Answers cached for the same (provider, IBAN, normalised name) within `vop.cache_ttl`
//!   are reused without a call (`from_cache`, counted in `finworker_vop_cache_hits`).
//! - The rest go to the provider through [`crate::vop::Verifier`] (shared rate limit,
//!   breaker, retries), `vop.in_flight` at a time; results are written in batches, so a
//!   job cut short keeps what it learnt and its successor skips those debtors.
//! - When the breaker is open or the provider keeps failing, the job stops launching calls,
//!   saves its results and enqueues its own continuation for later (`deferrals + 1`): it is
//!   put off, not failed. After `vop.max_deferrals` the remaining debtors get `error`.
//! - A job also hands over to a continuation after `vop.slice`, keeping jobs short.
//! - The job that verifies the upload's last chunk stamps it and starts the report.

use std::time::{Duration, Instant};

use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    context::AppContext,
    queue::{
        engine::NewJob,
        job::{Job, JobContext, JobError},
    },
    vop::{self, AccountAnswer, BavResult, CheckError, PayeeAnswer, VopResult},
};

/// Payload of `vop`: one chunk of one upload. Enqueued by validation; continuations carry
/// `round` (the how-manieth job for this chunk) and `deferrals`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vop {
    /// The upload.
    pub upload_id: Uuid,
    /// Chunk number (as in `upload_chunks`).
    pub chunk_no: u32,
    /// Jobs this chunk has had before this one.
    #[serde(default)]
    pub round: u32,
    /// Times this chunk was put off because the provider was unavailable.
    #[serde(default)]
    pub deferrals: u32,
}

impl Job for Vop {
    const NAME: &'static str = "vop";

    fn example() -> Self {
        Vop {
            upload_id: Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a11),
            chunk_no: 0,
            round: 0,
            deferrals: 0,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        run_chunk(&ctx, &self).await.map_err(JobError::Retryable)
    }
}

/// How long a `vop` attempt may keep starting calls: its slice, but never so long that a
/// call started at the end could outlive the attempt's timeout (a second kept in reserve for
/// saving). Zero when the timeout cannot fit one worst-case call (refused at start-up).
pub fn launch_window(slice: Duration, timeout: Duration, worst_call: Duration) -> Duration {
    slice.min(timeout.saturating_sub(worst_call + Duration::from_secs(1)))
}

/// The idempotency key of a chunk's `vop` job of one round.
pub fn key(upload_id: Uuid, chunk_no: u32, round: u32) -> String {
    format!("vop:{upload_id}:{chunk_no}:{round}")
}

/// Starts verification of a validated upload: one `vop` job per chunk. Idempotent.
pub async fn start(app: &AppContext, upload_id: Uuid) -> anyhow::Result<()> {
    let chunks =
        crate::pipeline::start_chunk_stage(app, upload_id, crate::pipeline::Stage::Verification)
            .await?;
    if chunks == 0 {
        return after_vop(app, upload_id).await;
    }
    tracing::info!(%upload_id, chunks, "verification started");
    Ok(())
}

#[derive(Clone)]
struct Target {
    debtor_id: i64,
    iban: String,
    name: String,
    bic: Option<String>,
}

impl Answer {
    /// No answer to give: the provider refused, or stayed unavailable.
    fn error(t: &Target, name_key: &str, msg: String) -> Self {
        Self {
            debtor_id: t.debtor_id,
            payee: PayeeAnswer {
                result: VopResult::Error,
                suggested_name: None,
                reference: None,
            },
            account: AccountAnswer {
                result: BavResult::Error,
                reference: None,
            },
            error: Some(msg),
            from_cache: false,
            iban: t.iban.clone(),
            name_key: name_key.to_string(),
        }
    }
}

#[derive(Clone)]
struct Answer {
    debtor_id: i64,
    payee: PayeeAnswer,
    account: AccountAnswer,
    error: Option<String>,
    from_cache: bool,
    iban: String,
    name_key: String,
}

async fn run_chunk(ctx: &JobContext, job: &Vop) -> anyhow::Result<()> {
    let app = &ctx.app;
    let verifier = &app.vop;
    let provider = verifier.provider_name();
    let id = job.upload_id;
    let chunk_no = i32::try_from(job.chunk_no).unwrap_or(i32::MAX);
    let mut tx = app.db.begin().await?;
    let Some((first, last, verified_at)) = tx
        .fetch_optional(sqlx::query_as::<_, (i32, i32, Option<chrono::DateTime<chrono::Utc>>)>(
            "SELECT first_row, last_row, verified_at FROM upload_chunks WHERE upload_id = $1 AND chunk_no = $2",
        )
        .bind(id)
        .bind(chunk_no))
        .await?
    else {
        anyhow::bail!("upload {id} has no chunk {chunk_no}");
    };
    if verified_at.is_some() {
        tx.commit().await?;
        return finish_if_last(app, id).await;
    }
    let rows: Vec<(i64, String, String, Option<String>)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT d.id, d.iban, d.name, d.bic FROM debtors d \
                 WHERE d.valid AND d.upload_id = $1 AND d.row_no BETWEEN $2 AND $3 \
                 AND NOT EXISTS (SELECT 1 FROM vop_results r WHERE r.debtor_id = d.id) ORDER BY d.id",
            )
            .bind(id)
            .bind(first)
            .bind(last),
        )
        .await?;
    let targets: Vec<Target> = rows
        .into_iter()
        .map(|(debtor_id, iban, name, bic)| Target {
            debtor_id,
            iban,
            name,
            bic,
        })
        .collect();

    // Cached answers, one query for the chunk.
    let ibans: Vec<&str> = targets.iter().map(|t| t.iban.as_str()).collect();
    let keys: Vec<String> = targets.iter().map(|t| vop::name_key(&t.name)).collect();
    let ttl = chrono::Duration::from_std(app.settings.vop.cache_ttl)
        .unwrap_or_else(|_| chrono::Duration::days(30));
    type Cached = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
    );
    let cached: Vec<Cached> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT c.iban, c.name_key, c.vop_result, c.suggested_name, c.vop_reference, c.bav_result, c.bav_reference \
                 FROM vop_cache c JOIN unnest($2::text[], $3::text[]) AS k(iban, name_key) \
                 ON c.iban = k.iban AND c.name_key = k.name_key \
                 WHERE c.provider = $1 AND c.checked_at > now() - $4::interval",
            )
            .bind(provider)
            .bind(&ibans)
            .bind(&keys)
            .bind(ttl),
        )
        .await?;
    tx.commit().await?;
    let cache: std::collections::HashMap<(String, String), Cached> = cached
        .into_iter()
        .map(|c| ((c.0.clone(), c.1.clone()), c))
        .collect();

    let mut answers: Vec<Answer> = Vec::new();
    let mut to_call: Vec<(Target, String)> = Vec::new();
    let mut twins: std::collections::HashMap<(String, String), Vec<Target>> =
        std::collections::HashMap::new();
    for (t, k) in targets.into_iter().zip(keys) {
        if let Some(c) = cache.get(&(t.iban.clone(), k.clone())) {
            app.metrics.vop_cache_hits.inc();
            answers.push(Answer {
                debtor_id: t.debtor_id,
                payee: PayeeAnswer {
                    result: VopResult::from_stored(&c.2),
                    suggested_name: c.3.clone(),
                    reference: c.4.clone(),
                },
                account: AccountAnswer {
                    result: BavResult::from_stored(&c.5),
                    reference: c.6.clone(),
                },
                error: None,
                from_cache: true,
                iban: t.iban,
                name_key: k,
            });
        } else if let Some(list) = twins.get_mut(&(t.iban.clone(), k.clone())) {
            // Same account and name as a debtor already queued: one call answers both.
            list.push(t);
        } else {
            twins.insert((t.iban.clone(), k.clone()), Vec::new());
            to_call.push((t, k));
        }
    }
    let remaining_before = to_call.len();
    // Cached answers are kept before any call is made.
    save(app, id, provider, &std::mem::take(&mut answers)).await?;

    // Calls, in flight `vop.in_flight` at a time, until done, unavailable, sliced or draining.
    // No call starts later than the slice, nor so late that its worst case (every retry
    // timing out) would outlive the attempt's timeout: a slow provider costs time, never the
    // answers already paid for.
    let deadline = Instant::now()
        + launch_window(
            app.settings.vop.slice,
            app.settings.queue(Vop::NAME).timeout,
            verifier.worst_case(),
        );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut unavailable: Option<(String, Duration)> = None;
    let give_up = job.deferrals > app.settings.vop.max_deferrals;
    let mut done_calls = 0usize;
    let mut failed = 0usize;
    if !give_up {
        let mut stream = futures::stream::iter(to_call.clone())
            .map(|(t, k)| {
                let stop = stop.clone();
                let shutdown = ctx.shutdown.clone();
                let verifier = verifier.clone();
                async move {
                    if stop.is_cancelled() || shutdown.is_cancelled() || Instant::now() >= deadline
                    {
                        return None;
                    }
                    let req = vop::Request {
                        iban: t.iban.clone(),
                        name: t.name.clone(),
                        bic: t.bic.clone(),
                    };
                    Some((t, k, verifier.check(&req).await))
                }
            })
            .buffer_unordered(app.settings.vop.in_flight)
            // Whatever has arrived is saved at once (in one statement when several answers
            // arrived together): a job cut short loses no answer it was given.
            .ready_chunks(200);
        while let Some(items) = stream.next().await {
            let mut batch: Vec<Answer> = Vec::new();
            for item in items {
                let Some((t, k, outcome)) = item else {
                    continue;
                };
                let answer = match outcome {
                    Ok((payee, account)) => Answer {
                        debtor_id: t.debtor_id,
                        payee,
                        account,
                        error: None,
                        from_cache: false,
                        iban: t.iban.clone(),
                        name_key: k.clone(),
                    },
                    Err(CheckError::Refused(msg)) => Answer::error(&t, &k, msg),
                    Err(CheckError::Failed(reason)) => {
                        // Left for the continuation; the breaker decides when to stop.
                        tracing::debug!(upload_id = %id, chunk_no, %reason, "check failed; retried later");
                        failed += 1;
                        continue;
                    }
                    Err(CheckError::Unavailable { reason, retry_in }) => {
                        if unavailable.is_none() {
                            tracing::warn!(upload_id = %id, chunk_no, %reason, "provider unavailable: putting the chunk off");
                        }
                        unavailable.get_or_insert((reason, retry_in));
                        stop.cancel();
                        continue;
                    }
                };
                done_calls += 1;
                for twin in twins
                    .get(&(t.iban.clone(), k.clone()))
                    .into_iter()
                    .flatten()
                {
                    app.metrics.vop_cache_hits.inc();
                    batch.push(Answer {
                        debtor_id: twin.debtor_id,
                        from_cache: answer.error.is_none(),
                        ..answer.clone()
                    });
                }
                batch.push(answer);
            }
            if !batch.is_empty() {
                save(app, id, provider, &batch).await?;
            }
        }
    } else {
        let msg = format!(
            "provider {provider} unavailable: chunk put off {} times",
            job.deferrals
        );
        for (t, k) in &to_call {
            answers.push(Answer::error(t, k, msg.clone()));
            for twin in twins
                .get(&(t.iban.clone(), k.clone()))
                .into_iter()
                .flatten()
            {
                answers.push(Answer::error(twin, k, msg.clone()));
            }
        }
        done_calls = to_call.len();
    }
    save(app, id, provider, &answers).await?;

    if done_calls < remaining_before {
        // Not finished: hand over to a continuation.
        let (delay, deferrals) = match &unavailable {
            Some((_, retry_in)) => (*retry_in, job.deferrals + 1),
            None if failed > 0 => (app.settings.vop.breaker_open_for, job.deferrals + 1),
            None => (Duration::ZERO, job.deferrals),
        };
        let next = Vop {
            upload_id: id,
            chunk_no: job.chunk_no,
            round: job.round + 1,
            deferrals,
        };
        let nj = NewJob {
            delay,
            idempotency_key: Some(key(id, job.chunk_no, next.round)),
            ..NewJob::new(Vop::NAME, serde_json::to_string(&next)?)
        };
        app.queue
            .push(
                std::slice::from_ref(&nj),
                app.settings.worker.idempotency_ttl,
            )
            .await?;
        tracing::info!(upload_id = %id, chunk_no, left = remaining_before - done_calls, delay_ms = delay.as_millis() as u64, deferrals, "vop chunk continues later");
        return Ok(());
    }

    let mut tx = app.db.begin().await?;
    let locked: Option<(Option<chrono::DateTime<chrono::Utc>>,)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT verified_at FROM upload_chunks WHERE upload_id = $1 AND chunk_no = $2 FOR UPDATE",
            )
            .bind(id)
            .bind(chunk_no),
        )
        .await?;
    if matches!(locked, Some((None,))) {
        tx.execute(
            sqlx::query(
                "UPDATE upload_chunks SET verified_at = now() WHERE upload_id = $1 AND chunk_no = $2",
            )
            .bind(id)
            .bind(chunk_no),
        )
        .await?;
        tx.execute(
            sqlx::query(
                "UPDATE uploads SET chunks_verified = chunks_verified + 1, \
                 verified_at = CASE WHEN chunks_verified + 1 = chunks_total THEN now() END, updated_at = now() \
                 WHERE id = $1",
            )
            .bind(id),
        )
        .await?;
    }
    tx.commit().await?;
    finish_if_last(app, id).await
}

/// Stores results (first one wins per debtor) and caches fresh provider answers.
async fn save(
    app: &AppContext,
    upload_id: Uuid,
    provider: &str,
    a: &[Answer],
) -> anyhow::Result<()> {
    if a.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = a.iter().map(|x| x.debtor_id).collect();
    let vop_r: Vec<&str> = a.iter().map(|x| x.payee.result.as_str()).collect();
    let sugg: Vec<Option<&str>> = a
        .iter()
        .map(|x| x.payee.suggested_name.as_deref())
        .collect();
    let vref: Vec<Option<&str>> = a.iter().map(|x| x.payee.reference.as_deref()).collect();
    let bav_r: Vec<&str> = a.iter().map(|x| x.account.result.as_str()).collect();
    let bref: Vec<Option<&str>> = a.iter().map(|x| x.account.reference.as_deref()).collect();
    let err: Vec<Option<&str>> = a.iter().map(|x| x.error.as_deref()).collect();
    let cached: Vec<bool> = a.iter().map(|x| x.from_cache).collect();
    let mut tx = app.db.begin().await?;
    tx.execute(
        sqlx::query(
            "INSERT INTO vop_results (debtor_id, upload_id, provider, vop_result, suggested_name, vop_reference, \
             bav_result, bav_reference, error, from_cache, checked_at) \
             SELECT t.id, $1, $2, t.v, t.s, t.vr, t.b, t.br, t.e, t.c, now() \
             FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bool[]) \
             AS t(id, v, s, vr, b, br, e, c) ON CONFLICT (debtor_id) DO NOTHING",
        )
        .bind(upload_id)
        .bind(provider)
        .bind(&ids)
        .bind(&vop_r)
        .bind(&sugg)
        .bind(&vref)
        .bind(&bav_r)
        .bind(&bref)
        .bind(&err)
        .bind(&cached),
    )
    .await?;
    // Fresh answers (not errors) feed the cache; last writer wins per key.
    let fresh: Vec<&Answer> = a
        .iter()
        .filter(|x| !x.from_cache && x.error.is_none())
        .collect();
    if !fresh.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let fresh: Vec<&Answer> = fresh
            .into_iter()
            .filter(|x| seen.insert((x.iban.as_str(), x.name_key.as_str())))
            .collect();
        let ib: Vec<&str> = fresh.iter().map(|x| x.iban.as_str()).collect();
        let nk: Vec<&str> = fresh.iter().map(|x| x.name_key.as_str()).collect();
        let v: Vec<&str> = fresh.iter().map(|x| x.payee.result.as_str()).collect();
        let s: Vec<Option<&str>> = fresh
            .iter()
            .map(|x| x.payee.suggested_name.as_deref())
            .collect();
        let vr: Vec<Option<&str>> = fresh.iter().map(|x| x.payee.reference.as_deref()).collect();
        let b: Vec<&str> = fresh.iter().map(|x| x.account.result.as_str()).collect();
        let br: Vec<Option<&str>> = fresh
            .iter()
            .map(|x| x.account.reference.as_deref())
            .collect();
        tx.execute(
            sqlx::query(
                "INSERT INTO vop_cache (provider, iban, name_key, vop_result, suggested_name, vop_reference, bav_result, bav_reference, checked_at) \
                 SELECT $1, t.* , now() FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
                 AS t(iban, name_key, v, s, vr, b, br) \
                 ON CONFLICT (provider, iban, name_key) DO UPDATE SET vop_result = EXCLUDED.vop_result, \
                 suggested_name = EXCLUDED.suggested_name, vop_reference = EXCLUDED.vop_reference, \
                 bav_result = EXCLUDED.bav_result, bav_reference = EXCLUDED.bav_reference, checked_at = EXCLUDED.checked_at",
            )
            .bind(provider)
            .bind(&ib)
            .bind(&nk)
            .bind(&v)
            .bind(&s)
            .bind(&vr)
            .bind(&b)
            .bind(&br),
        )
        .await?;
    }
    // Progress marks the upload as alive for the sweeper (cheap: written at most every 10 s).
    tx.execute(
        sqlx::query(
            "UPDATE uploads SET updated_at = now() WHERE id = $1 AND updated_at < now() - interval '10 seconds'",
        )
        .bind(upload_id),
    )
    .await?;
    tx.commit().await?;
    for x in a {
        for (check, result) in [
            ("vop", x.payee.result.as_str()),
            ("bav", x.account.result.as_str()),
        ] {
            app.metrics
                .vop_results
                .get_or_create(&crate::metrics::CheckLabels {
                    check: check.into(),
                    result: result.into(),
                })
                .inc();
        }
    }
    Ok(())
}

async fn finish_if_last(app: &AppContext, id: Uuid) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    let v: Option<(Option<chrono::DateTime<chrono::Utc>>,)> = tx
        .fetch_optional(sqlx::query_as("SELECT verified_at FROM uploads WHERE id = $1").bind(id))
        .await?;
    tx.commit().await?;
    if matches!(v, Some((Some(_),))) {
        after_vop(app, id).await?;
    }
    Ok(())
}

/// What follows a verified upload: its VOP report, when `reports.after_vop`. Idempotent.
pub async fn after_vop(app: &AppContext, upload_id: Uuid) -> anyhow::Result<()> {
    if app.settings.reports.after_vop {
        super::vop_report::enqueue_for_upload(app, upload_id, crate::reports::Format::Xlsx).await?;
    }
    Ok(())
}
