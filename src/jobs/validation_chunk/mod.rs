//! `validation_chunk`: checks the debtors one chunk of an upload imported, in one
//! transaction. The import validates as it goes (`upload_chunk`); this job re-checks a chunk
//! whose debtors were imported unchecked (by a version that validated in a second pass).
//!
//! - Reads the chunk's unchecked debtors by index range, checks them in memory
//!   ([`rules::check`](crate::validation::check)), then writes `valid`, `sepa_name` and `issues` onto each.
//! - Exactly once: the chunk row is locked and stamped `validated_at` in that transaction;
//!   a redelivered job sees the stamp and only makes sure the next stage started.
//! - The chunk that validates the upload's last chunk stamps the upload and fans out the
//!   `vop` jobs (one per chunk with valid debtors) under idempotency keys.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validation::{self as rules, DebtorData};
use crate::{
    context::AppContext,
    queue::job::{Job, JobContext, JobError},
};

/// Payload of `validation_chunk`: one chunk of one upload.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidationChunk {
    /// The upload.
    pub upload_id: Uuid,
    /// Chunk number (as in `upload_chunks`).
    pub chunk_no: u32,
}

impl Job for ValidationChunk {
    const NAME: &'static str = "validation_chunk";

    fn example() -> Self {
        ValidationChunk {
            upload_id: Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a11),
            chunk_no: 0,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        match validate(&ctx.app, &self).await? {
            Done::Chunk => Ok(()),
            Done::Upload => after_validation(&ctx.app, self.upload_id)
                .await
                .map_err(JobError::Retryable),
        }
    }
}

enum Done {
    Chunk,
    Upload,
}

/// A debtor as read for validation.
#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    #[sqlx(flatten)]
    data: DebtorData,
}

fn retry(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Retryable(e.into())
}

async fn validate(app: &AppContext, job: &ValidationChunk) -> Result<Done, JobError> {
    let id = job.upload_id;
    let chunk_no = i32::try_from(job.chunk_no).unwrap_or(i32::MAX);
    let mut tx = app.db.begin().await.map_err(retry)?;
    let chunk: Option<(i32, i32, Option<chrono::DateTime<chrono::Utc>>)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT first_row, last_row, validated_at FROM upload_chunks WHERE upload_id = $1 AND chunk_no = $2",
            )
            .bind(id)
            .bind(chunk_no),
        )
        .await
        .map_err(retry)?;
    let Some((first, last, validated_at)) = chunk else {
        return Err(JobError::permanent(format!(
            "upload {id} has no chunk {chunk_no}"
        )));
    };
    if validated_at.is_some() {
        tx.commit().await.map_err(retry)?;
        return Ok(if upload_validated(app, id).await? {
            Done::Upload
        } else {
            Done::Chunk
        });
    }
    let rows: Vec<Row> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id, name, email, iban, bic, amount_minor, currency, mandate_id, mandate_date, country \
                 FROM debtors WHERE upload_id = $1 AND row_no BETWEEN $2 AND $3 AND valid IS NULL ORDER BY row_no",
            )
            .bind(id)
            .bind(first)
            .bind(last),
        )
        .await
        .map_err(retry)?;
    tx.commit().await.map_err(retry)?;

    let today = chrono::Utc::now().date_naive();
    let rules_cfg = &app.settings.validation;
    let (mut ids, mut valids, mut sepa, mut issues) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut valid, mut invalid) = (0i64, 0i64);
    for Row {
        id: debtor_id,
        data: d,
    } in rows
    {
        let v = rules::check(&d, rules_cfg, today);
        if v.valid {
            valid += 1;
        } else {
            invalid += 1;
        }
        ids.push(debtor_id);
        valids.push(v.valid);
        sepa.push(v.sepa_name_if_changed(&d.name).map(str::to_string));
        issues.push(v.issues_json());
    }

    let mut tx = app.db.begin().await.map_err(retry)?;
    let locked: Option<(Option<chrono::DateTime<chrono::Utc>>,)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT validated_at FROM upload_chunks WHERE upload_id = $1 AND chunk_no = $2 FOR UPDATE",
            )
            .bind(id)
            .bind(chunk_no),
        )
        .await
        .map_err(retry)?;
    if !matches!(locked, Some((None,))) {
        return Ok(Done::Chunk); // another copy of this job got here first
    }
    if !ids.is_empty() {
        tx.execute(
            sqlx::query(
                "UPDATE debtors d SET valid = v.valid, sepa_name = v.sepa_name, issues = v.issues::jsonb \
                 FROM unnest($1::bigint[], $2::boolean[], $3::text[], $4::text[]) AS v(id, valid, sepa_name, issues) \
                 WHERE d.id = v.id",
            )
            .bind(&ids)
            .bind(&valids)
            .bind(&sepa)
            .bind(&issues),
        )
        .await
        .map_err(retry)?;
    }
    tx.execute(
        sqlx::query(
            "UPDATE upload_chunks SET validated_at = now(), valid = $3, invalid = $4 WHERE upload_id = $1 AND chunk_no = $2",
        )
        .bind(id)
        .bind(chunk_no)
        .bind(valid as i32)
        .bind(invalid as i32),
    )
    .await
    .map_err(retry)?;
    let (done, total): (i32, Option<i32>) = tx
        .fetch_optional(
            sqlx::query_as(
                "UPDATE uploads SET chunks_validated = chunks_validated + 1, rows_valid = rows_valid + $2, \
                 rows_invalid = rows_invalid + $3, updated_at = now() WHERE id = $1 \
                 RETURNING chunks_validated, chunks_total",
            )
            .bind(id)
            .bind(valid)
            .bind(invalid),
        )
        .await
        .map_err(retry)?
        .ok_or_else(|| JobError::permanent(format!("upload {id} vanished")))?;
    let finished = Some(done) == total;
    if finished {
        tx.execute(sqlx::query("UPDATE uploads SET validated_at = now() WHERE id = $1").bind(id))
            .await
            .map_err(retry)?;
    }
    tx.commit().await.map_err(retry)?;
    tracing::debug!(upload_id = %id, chunk_no, valid, invalid, "chunk validated");
    app.metrics.count_validated(valid, invalid);
    if finished {
        tracing::info!(upload_id = %id, "upload validated");
        Ok(Done::Upload)
    } else {
        Ok(Done::Chunk)
    }
}

async fn upload_validated(app: &AppContext, id: Uuid) -> Result<bool, JobError> {
    let mut tx = app.db.begin().await.map_err(retry)?;
    let v: Option<(Option<chrono::DateTime<chrono::Utc>>,)> = tx
        .fetch_optional(sqlx::query_as("SELECT validated_at FROM uploads WHERE id = $1").bind(id))
        .await
        .map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    Ok(matches!(v, Some((Some(_),))))
}

/// What follows a validated upload: its verification, when `vop.enabled`. Idempotent.
pub async fn after_validation(app: &AppContext, upload_id: Uuid) -> anyhow::Result<()> {
    if app.settings.vop.enabled {
        super::vop::start(app, upload_id).await
    } else {
        let mut tx = app.db.begin().await?;
        tx.execute(
            sqlx::query(
                "UPDATE uploads SET note = concat_ws('; ', note, 'vop.enabled is off: no verification was started') \
                 WHERE id = $1 AND (note IS NULL OR note NOT LIKE '%vop.enabled is off%')",
            )
            .bind(upload_id),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
