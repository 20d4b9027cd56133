//! Which IBAN keys an import must look up among earlier debtors.
//!
//! Linking a row to the debtor it repeats probes the `debtors_iban_key` index once per key;
//! on a 10M-row table that was two thirds of the extra import time (docs/uploads.md,
//! Performance). The filter (migration `20261208000001_debtor_key_filter`) holds one bit per
//! key of every *filtered* completed upload: a clear bit means no such debtor has that key, so
//! the probe can be skipped. It is exact where it matters: a chunk skips probes only when every
//! completed upload it may link to is filtered, read in the same snapshot as the filter's
//! version, and the worker's copy is brought up to that version first. Otherwise it probes
//! every key, as before.
//!
//! An upload's keys are added after it completes ([`add_upload`], from the completing job,
//! the sweeper, `finworker migrate` and `finworker uploads filter-keys`), in one transaction
//! with setting `uploads.key_filtered`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{Db, DbError};

/// Bits in the filter: 2^27 (16 MiB).
const BITS_LOG2: u32 = 27;
/// Bits in one stored slot (1 KiB).
const SLOT_BITS: usize = 8192;
const SLOT_BYTES: usize = SLOT_BITS / 8;
const SLOTS: usize = (1 << BITS_LOG2) / SLOT_BITS;

/// The key's bit: its top 27 bits. Stored and held the same way: bit `b` is bit `b % 8` of byte
/// `b / 8` (of the whole filter, or of slot `b / SLOT_BITS`'s bytes).
fn bit_of(key: i64) -> usize {
    ((key as u64) >> (64 - BITS_LOG2)) as usize
}

fn is_set(bytes: &[u8], bit: usize) -> bool {
    bytes
        .get(bit / 8)
        .is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

fn set(bytes: &mut [u8], bit: usize) {
    bytes[bit / 8] |= 1 << (bit % 8);
}

/// A worker's copy of the filter.
#[derive(Debug)]
struct Held {
    /// All 16 MiB once a slot was loaded; empty before (no key is in it).
    bytes: Vec<u8>,
    /// The meta version it reflects; -1 before the first load.
    version: i64,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            bytes: Vec::new(),
            version: -1,
        }
    }
}

impl Held {
    fn maybe(&self, key: i64) -> bool {
        is_set(&self.bytes, bit_of(key))
    }

    fn apply(&mut self, slot: usize, bits: &[u8]) {
        if slot >= SLOTS || bits.len() != SLOT_BYTES {
            return;
        }
        if self.bytes.is_empty() {
            self.bytes = vec![0; SLOTS * SLOT_BYTES];
        }
        self.bytes[slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES].copy_from_slice(bits);
    }
}

/// The process's copy, shared by its jobs.
#[derive(Debug, Default)]
pub struct KeyFilter {
    held: tokio::sync::Mutex<Held>,
}

/// What [`KeyFilter::to_probe`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToProbe {
    /// The keys to look up.
    pub keys: Vec<i64>,
    /// How many were left out because no earlier debtor can have them.
    pub skipped: usize,
}

impl KeyFilter {
    /// The keys (sorted, distinct) an upload that started at `started_at` must look up among
    /// the debtors of uploads completed before it: all of them while any such upload is not in
    /// the filter yet; otherwise those the filter may hold.
    pub async fn to_probe(
        &self,
        db: &Db,
        started_at: DateTime<Utc>,
        keys: Vec<i64>,
    ) -> Result<ToProbe, DbError> {
        // One statement, one snapshot: the version and "every earlier upload is filtered".
        let mut tx = db.begin().await?;
        let (version, all_filtered): (i64, bool) = tx
            .fetch_one(
                sqlx::query_as(
                    "SELECT (SELECT version FROM debtor_key_filter_meta), NOT EXISTS ( \
                       SELECT 1 FROM uploads WHERE status = 'completed' AND NOT key_filtered AND finished_at < $1)",
                )
                .bind(started_at),
            )
            .await?;
        tx.commit().await?;
        if !all_filtered {
            return Ok(ToProbe { keys, skipped: 0 });
        }
        let mut held = self.held.lock().await;
        if held.version < version {
            let mut tx = db.begin().await?;
            // The slots changed since this copy, with the version they add up to (same snapshot).
            let rows: Vec<(i64, Option<i32>, Option<Vec<u8>>)> = tx
                .fetch_all(
                    sqlx::query_as(
                        "SELECT m.version, f.slot, f.bits FROM debtor_key_filter_meta m \
                         LEFT JOIN debtor_key_filter f ON f.version > $1",
                    )
                    .bind(held.version),
                )
                .await?;
            tx.commit().await?;
            for (v, slot, bits) in rows {
                held.version = v;
                if let (Some(slot), Some(bits)) = (slot, bits) {
                    held.apply(usize::try_from(slot).unwrap_or(usize::MAX), &bits);
                }
            }
        }
        let before = keys.len();
        let keys: Vec<i64> = keys.into_iter().filter(|k| held.maybe(*k)).collect();
        Ok(ToProbe {
            skipped: before - keys.len(),
            keys,
        })
    }
}

/// Adds the keys of a completed upload's debtors to the filter and marks it filtered. Returns
/// false when there was nothing to do (not completed, or filtered already).
pub async fn add_upload(db: &Db, upload_id: Uuid) -> Result<bool, DbError> {
    let mut tx = db.begin().await?;
    // The meta row's lock first: changes are serialised and their versions in commit order.
    // Taken only when the upload looks due, so a repeated call (a re-driven completion) does
    // not queue behind another upload's change for nothing.
    let version: Option<(i64,)> = tx
        .fetch_optional(
            sqlx::query_as(
                "UPDATE debtor_key_filter_meta SET version = version + 1 WHERE EXISTS ( \
                   SELECT 1 FROM uploads WHERE id = $1 AND status = 'completed' AND NOT key_filtered) \
                 RETURNING version",
            )
            .bind(upload_id),
        )
        .await?;
    let Some((version,)) = version else {
        tx.commit().await?;
        return Ok(false);
    };
    // Under the lock, again: another call may have added it meanwhile.
    let todo: Option<(bool,)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT key_filtered FROM uploads WHERE id = $1 AND status = 'completed' FOR UPDATE",
            )
            .bind(upload_id),
        )
        .await?;
    if !matches!(todo, Some((false,))) {
        drop(tx); // rolls back the version's bump
        return Ok(false);
    }
    let keys: Vec<(i64,)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT iban_key FROM debtors WHERE upload_id = $1 AND iban_key IS NOT NULL",
            )
            .bind(upload_id),
        )
        .await?;
    let bits: Vec<usize> = keys.iter().map(|(k,)| bit_of(*k)).collect();
    let mut slots: Vec<i32> = bits.iter().map(|b| (b / SLOT_BITS) as i32).collect();
    slots.sort_unstable();
    slots.dedup();
    if !slots.is_empty() {
        let old: Vec<(i32, Vec<u8>)> = tx
            .fetch_all(
                sqlx::query_as("SELECT slot, bits FROM debtor_key_filter WHERE slot = ANY($1)")
                    .bind(&slots),
            )
            .await?;
        // The stored slots are updated in place (no second 16 MiB copy); new ones start empty.
        let mut stored: std::collections::BTreeMap<i32, Vec<u8>> = old
            .into_iter()
            .filter(|(_, bits)| bits.len() == SLOT_BYTES)
            .collect();
        for b in bits {
            let slot = stored
                .entry((b / SLOT_BITS) as i32)
                .or_insert_with(|| vec![0u8; SLOT_BYTES]);
            set(slot, b % SLOT_BITS);
        }
        let (ids, bits): (Vec<i32>, Vec<Vec<u8>>) = stored.into_iter().unzip();
        tx.execute(
            sqlx::query(
                "INSERT INTO debtor_key_filter (slot, bits, version) \
                 SELECT s, b, $3 FROM unnest($1::int[], $2::bytea[]) AS v(s, b) \
                 ON CONFLICT (slot) DO UPDATE SET bits = EXCLUDED.bits, version = EXCLUDED.version",
            )
            .bind(&ids)
            .bind(&bits)
            .bind(version),
        )
        .await?;
    }
    tx.execute(sqlx::query("UPDATE uploads SET key_filtered = true WHERE id = $1").bind(upload_id))
        .await?;
    tx.commit().await?;
    tracing::debug!(upload_id = %upload_id, keys = keys.len(), version, "upload's keys added to the linking filter");
    Ok(true)
}

/// Adds up to `limit` completed uploads not yet in the filter, oldest first. Returns how many.
pub async fn catch_up(db: &Db, limit: i64) -> Result<u64, DbError> {
    let mut tx = db.begin().await?;
    let ids: Vec<(Uuid,)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id FROM uploads WHERE status = 'completed' AND NOT key_filtered \
                 ORDER BY finished_at LIMIT $1",
            )
            .bind(limit),
        )
        .await?;
    tx.commit().await?;
    let mut n = 0;
    for (id,) in ids {
        if add_upload(db, id).await? {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_in_the_slot_bytes_the_database_stores() {
        // The bytes add_upload writes for a slot must be the ones the worker's copy reads.
        for key in [i64::MIN, -1, 0, 1, 0x1234_5678_9abc_def0, i64::MAX] {
            let b = bit_of(key);
            let mut slot = vec![0u8; SLOT_BYTES];
            set(&mut slot, b % SLOT_BITS);
            let mut held = Held::default();
            held.apply(b / SLOT_BITS, &slot);
            assert!(held.maybe(key), "key {key:#x}");
            // A key in another bit of the same slot is not.
            let other = key ^ (1i64 << (64 - BITS_LOG2));
            assert!(!held.maybe(other), "key {other:#x}");
        }
        assert!(!Held::default().maybe(42), "an unloaded copy holds nothing");
    }
}
