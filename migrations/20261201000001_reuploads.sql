-- Re-uploads: duplicates only within one upload; across uploads every row is a debtor line of
-- its own upload, linked to the debtor it repeats. Validation is done by the import itself.
--
-- Before: (iban, reference) was unique over all debtors, so next cycle's file for the same
-- debtors, or a corrected amount, was counted as a duplicate and never validated.

-- 1. Debtors: no global key; a keyed hash of the IBAN for lookups (history, linking), the
--    link to the repeated debtor and what changed, the validation outcome, the raw row.
ALTER TABLE debtors DROP CONSTRAINT debtors_dedup_key;
ALTER TABLE debtors
    -- First 8 bytes of HMAC-SHA256(privacy.iban_key, normalised IBAN), as a signed bigint.
    -- NULL only for rows stored before this migration until `finworker migrate` fills them.
    ADD COLUMN iban_key            bigint,
    -- The latest debtor of an earlier completed upload with the same IBAN and reference.
    -- Debtors of completed uploads are never deleted, so this stays valid (no foreign key:
    -- its per-row check cost a third of an import, see 20261124000002).
    ADD COLUMN previous_debtor_id  bigint,
    -- What differs from that debtor: amount, mandate, name, bic. Empty: repeated unchanged.
    ADD COLUMN changes             text[],
    -- Validation outcome (NULL: not checked yet, only rows imported by an earlier version).
    ADD COLUMN valid               boolean,
    -- The name as it can be sent, when it differs from `name` (transliterated).
    ADD COLUMN sepa_name           text,
    -- Findings: [{code, field, severity, message, suggestion}], NULL when none.
    ADD COLUMN issues              jsonb,
    -- The file's row as read: a JSON array of every cell's text, in column order
    -- (uploads.headers names them). Kept for audit.
    ADD COLUMN raw                 text;
CREATE INDEX debtors_iban_key ON debtors (iban_key);

-- 2. Validation results move onto the debtor row (one row per debtor, not three).
UPDATE debtors d SET valid = c.valid, sepa_name = NULLIF(c.sepa_name, d.name)
FROM debtor_checks c WHERE c.debtor_id = d.id;
UPDATE debtors d SET issues = i.issues
FROM (SELECT debtor_id,
             jsonb_agg(jsonb_build_object('code', code, 'field', field, 'severity', severity,
                                          'message', message, 'suggestion', suggestion)
                       ORDER BY severity, code) AS issues
      FROM debtor_issues GROUP BY debtor_id) i
WHERE i.debtor_id = d.id;
DROP TABLE debtor_checks;
DROP TABLE debtor_issues;

-- 3. Duplicates within an upload point at the row they repeat (its first occurrence);
--    rows recorded before this migration keep their debtor_id (possibly another upload's).
ALTER TABLE upload_duplicates ALTER COLUMN debtor_id DROP NOT NULL;
ALTER TABLE upload_duplicates
    ADD COLUMN first_row integer,
    ADD COLUMN raw text,
    ADD CONSTRAINT upload_duplicates_target CHECK (debtor_id IS NOT NULL OR first_row IS NOT NULL);
ALTER TABLE upload_rejects ADD COLUMN raw text;

-- 4. Uploads: the file's content hash (the same file twice is refused unless allowed), its
--    header row, and how its debtors relate to earlier uploads'.
ALTER TABLE uploads
    ADD COLUMN content_sha256   bytea,
    -- = content_sha256 while this upload stands for that content; NULL when it failed or was
    -- allowed as a repeat. Unique: two uploads of one file cannot both pass the check.
    ADD COLUMN content_claim    bytea,
    ADD COLUMN allow_same_file  boolean NOT NULL DEFAULT false,
    ADD COLUMN headers          jsonb,
    ADD COLUMN rows_new         bigint NOT NULL DEFAULT 0,
    ADD COLUMN rows_unchanged   bigint NOT NULL DEFAULT 0,
    ADD COLUMN rows_changed     bigint NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX uploads_content_claim ON uploads (content_claim);
-- Linking looks up completed uploads by when they completed.
CREATE INDEX uploads_finished_at ON uploads (finished_at) WHERE status = 'completed';

-- 5. Uploads in progress were staged in the earlier chunk format: start them again from their
--    file (the sweeper, or the upload job's next attempt, re-splits a pending upload). One
--    whose debtors other uploads already list as duplicates cannot be undone that way: it is
--    failed with a sentence saying to upload the file again (its rows stay, as a failed
--    upload's referenced rows always did).
CREATE TEMP TABLE in_progress ON COMMIT DROP AS
    SELECT u.id, NOT EXISTS (
        SELECT 1 FROM debtors d JOIN upload_duplicates x ON x.debtor_id = d.id
        WHERE d.upload_id = u.id AND x.upload_id <> u.id) AS restartable
    FROM uploads u WHERE u.status IN ('splitting', 'importing');
UPDATE uploads SET status = 'failed', finished_at = now(), updated_at = now(),
    error = 'this upload was in progress when finworker was upgraded to per-upload duplicates and could not be resumed; upload the file again'
WHERE id IN (SELECT id FROM in_progress WHERE NOT restartable);
DELETE FROM upload_duplicates WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
DELETE FROM upload_rejects WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
DELETE FROM debtors WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
DELETE FROM upload_chunks WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
UPDATE uploads SET status = 'pending', chunks_total = NULL, chunks_staged = 0, chunks_done = 0,
    chunks_validated = 0, rows_seen = 0, rows_blank = 0, rows_imported = 0, rows_duplicate = 0,
    rows_rejected = 0, rows_valid = 0, rows_invalid = 0, bytes_read = 0,
    updated_at = now() - interval '1 day', -- stale at once: the next sweep re-drives it
    note = concat_ws('; ', note, 'restarted from its file by the upgrade to per-upload duplicates')
WHERE id IN (SELECT id FROM in_progress WHERE restartable);
