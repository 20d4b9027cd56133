//! Group commit of webhook deliveries: a delivery is acknowledged only once its row is
//! committed, and deliveries arriving together share a commit (up to `webhooks.group_max`
//! each, `webhooks.writers` commits at once). A commit per delivery would cap the receiver at
//! Postgres's commit rate; a shared one costs each delivery a few milliseconds at most.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{config::WebhookSettings, db::Db};

/// One delivery as it will be stored.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `emp`.
    pub provider: &'static str,
    /// As named in the URL.
    pub account: String,
    /// The peer's address.
    pub remote_addr: Option<String>,
    /// Request headers (JSON object).
    pub headers: serde_json::Value,
    /// The body (cut at the size limit).
    pub body: Vec<u8>,
    /// The body's size as received.
    pub body_bytes: i32,
    /// Gateway id of the transaction.
    pub unique_id: Option<String>,
    /// Our id of the transaction.
    pub transaction_id: Option<String>,
    /// Status or event.
    pub kind: Option<String>,
    /// Hash of the sorted fields.
    pub payload_hash: Option<Vec<u8>>,
    /// Algorithm of a verified signature.
    pub signature: Option<&'static str>,
    /// `accepted`, `rejected` or `malformed`.
    pub verdict: &'static str,
    /// Why rejected or malformed.
    pub reason: Option<String>,
}

/// What storing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new accepted delivery, to be processed.
    New(i64),
    /// The repeat of an accepted delivery already stored (counted on it, not processed again).
    Repeat(i64),
    /// A rejected or malformed delivery, kept for the record.
    Kept,
}

/// Why a delivery could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or is unreachable.
    #[error("the delivery store is unavailable: {0}")]
    Unavailable(String),
    /// The receiver is shutting down.
    #[error("the delivery store is closed")]
    Closed,
}

type Reply = oneshot::Sender<Result<Stored, StoreError>>;

/// The group-commit writer's front door. Cheap to clone; its writers stop when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct DeliveryStore {
    tx: mpsc::Sender<(Delivery, Reply)>,
    timeout: std::time::Duration,
}

impl DeliveryStore {
    /// Starts `settings.writers` writer tasks. The id of every newly stored accepted delivery
    /// goes to `new` once committed — also when its request gave up waiting (a 503 already
    /// answered), so no stored delivery waits for the sweeper.
    pub fn start(db: Db, settings: &WebhookSettings, new: mpsc::UnboundedSender<i64>) -> Self {
        let group = settings.group_max.max(1);
        let (tx, rx) = mpsc::channel::<(Delivery, Reply)>(group * settings.writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..settings.writers.max(1) {
            let (db, rx, new) = (db.clone(), rx.clone(), new.clone());
            tokio::spawn(async move {
                loop {
                    // One writer at a time takes what is waiting (up to a group), then commits
                    // while the next writer gathers the following group.
                    let mut batch = Vec::with_capacity(group);
                    {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(d) => batch.push(d),
                            None => return,
                        }
                        while batch.len() < group {
                            match rx.try_recv() {
                                Ok(d) => batch.push(d),
                                Err(_) => break,
                            }
                        }
                    }
                    commit(&db, batch, &new).await;
                }
            });
        }
        Self {
            tx,
            timeout: settings.store_timeout,
        }
    }

    /// Stores one delivery; returns once it is committed.
    pub async fn store(&self, d: Delivery) -> Result<Stored, StoreError> {
        let (reply, answer) = oneshot::channel();
        let wait = async {
            self.tx
                .send((d, reply))
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "not stored within {:?}",
                    self.timeout
                )))
            })
    }
}

async fn commit(db: &Db, batch: Vec<(Delivery, Reply)>, new: &mpsc::UnboundedSender<i64>) {
    match insert(db, &batch).await {
        Ok(results) => {
            for ((_, reply), r) in batch.into_iter().zip(results) {
                if let Stored::New(id) = r {
                    let _ = new.send(id);
                }
                let _ = reply.send(Ok(r));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, deliveries = batch.len(), "webhook deliveries not stored; answering 503 so the gateway sends them again");
            let msg = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
            }
        }
    }
}

type Key = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
);

fn key(d: &Delivery) -> Key {
    (
        d.provider.to_string(),
        d.account.clone(),
        d.unique_id.clone(),
        d.kind.clone(),
        d.payload_hash.clone(),
    )
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    provider: String,
    account: String,
    unique_id: Option<String>,
    kind: Option<String>,
    payload_hash: Option<Vec<u8>>,
    accepted: bool,
    inserted: bool,
}

/// One transaction for the whole group: accepted deliveries upserted on their dedup key
/// (a repeat is counted on the stored one), the others inserted as they are.
async fn insert(db: &Db, batch: &[(Delivery, Reply)]) -> Result<Vec<Stored>, crate::db::DbError> {
    // A delivery repeated within the group is one row (an upsert may not touch a row twice).
    let mut first: HashMap<Key, usize> = HashMap::new();
    let mut rows: Vec<&Delivery> = Vec::with_capacity(batch.len());
    for (d, _) in batch {
        if d.verdict == "accepted" {
            if first.contains_key(&key(d)) {
                continue;
            }
            first.insert(key(d), rows.len());
        }
        rows.push(d);
    }
    let col =
        |f: &dyn Fn(&Delivery) -> Option<String>| rows.iter().map(|d| f(d)).collect::<Vec<_>>();
    let mut tx = db.begin().await?;
    let stored: Vec<Row> = tx
        .fetch_all(
            sqlx::query_as(
                "INSERT INTO webhook_deliveries AS w (provider, account, remote_addr, headers, body, body_bytes, \
                    unique_id, transaction_id, kind, payload_hash, signature, verdict, reason, state) \
                 SELECT v.provider, v.account, v.remote_addr, v.headers, v.body, v.body_bytes, v.unique_id, \
                    v.transaction_id, v.kind, v.payload_hash, v.signature, v.verdict, v.reason, \
                    CASE WHEN v.verdict = 'accepted' THEN 'queued' ELSE 'ignored' END \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::bytea[], $6::int4[], $7::text[], \
                    $8::text[], $9::text[], $10::bytea[], $11::text[], $12::text[], $13::text[]) \
                    AS v(provider, account, remote_addr, headers, body, body_bytes, unique_id, transaction_id, \
                         kind, payload_hash, signature, verdict, reason) \
                 ON CONFLICT (provider, account, unique_id, kind, payload_hash) WHERE verdict = 'accepted' \
                 DO UPDATE SET repeats = w.repeats + 1, last_repeat_at = now() \
                 RETURNING w.id, w.provider, w.account, w.unique_id, w.kind, w.payload_hash, \
                    w.verdict = 'accepted' AS accepted, w.repeats = 0 AS inserted",
            )
            .bind(col(&|d| Some(d.provider.to_string())))
            .bind(col(&|d| Some(d.account.clone())))
            .bind(col(&|d| d.remote_addr.clone()))
            .bind(rows.iter().map(|d| d.headers.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|d| d.body.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|d| d.body_bytes).collect::<Vec<_>>())
            .bind(col(&|d| d.unique_id.clone()))
            .bind(col(&|d| d.transaction_id.clone()))
            .bind(col(&|d| d.kind.clone()))
            .bind(rows.iter().map(|d| d.payload_hash.clone()).collect::<Vec<_>>())
            .bind(col(&|d| d.signature.map(str::to_string)))
            .bind(col(&|d| Some(d.verdict.to_string())))
            .bind(col(&|d| d.reason.clone())),
        )
        .await?;
    tx.commit().await?;
    let by_key: HashMap<Key, (i64, bool)> = stored
        .into_iter()
        .filter(|r| r.accepted)
        .map(|r| {
            (
                (r.provider, r.account, r.unique_id, r.kind, r.payload_hash),
                (r.id, r.inserted),
            )
        })
        .collect();
    // Within the group, the first of repeated deliveries is the new one.
    let mut seen: std::collections::HashSet<Key> = std::collections::HashSet::new();
    Ok(batch
        .iter()
        .map(|(d, _)| {
            if d.verdict != "accepted" {
                return Stored::Kept;
            }
            let k = key(d);
            match by_key.get(&k) {
                Some(&(id, inserted)) if inserted && seen.insert(k) => Stored::New(id),
                Some(&(id, _)) => Stored::Repeat(id),
                None => Stored::Kept,
            }
        })
        .collect())
}
