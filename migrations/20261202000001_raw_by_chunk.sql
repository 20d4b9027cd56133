-- The import writes less per row, for speed (docs/uploads.md, Performance):
--
-- 1. The raw rows kept for audit move out of debtors, upload_duplicates and upload_rejects into
--    one row per imported chunk: a JSON array of [row_no, [cell, ...]], lz4-compressed by
--    Postgres. A raw value per debtor row was about 200 bytes of a 570-byte row, on every
--    page of the table billing reads; per chunk it is one compressed value of ~1 MB.
--    `upload_raw_rows` reads them back one row at a time.
-- 2. The NAME_TRANSLITERATED warning (half of all debtors on real files) is no longer stored
--    in `issues`: `sepa_name` is set exactly when it applies, and `debtor_findings` lists it
--    beside the stored findings with the same words.

CREATE TABLE upload_raw (
    upload_id  uuid NOT NULL REFERENCES uploads (id),
    first_row  integer NOT NULL,
    last_row   integer NOT NULL,
    -- JSON: [[row_no, ["cell", ...]], ...], every row of the chunk whatever became of it.
    rows       text COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (upload_id, first_row),
    CHECK (first_row <= last_row)
);

-- Existing raw rows, grouped like chunks of 5,000 rows.
INSERT INTO upload_raw (upload_id, first_row, last_row, rows)
SELECT upload_id, min(row_no), max(row_no),
       json_agg(json_build_array(row_no, raw::json) ORDER BY row_no)::text
FROM (SELECT upload_id, row_no, raw FROM debtors WHERE raw IS NOT NULL
      UNION ALL SELECT upload_id, row_no, raw FROM upload_duplicates WHERE raw IS NOT NULL
      UNION ALL SELECT upload_id, row_no, raw FROM upload_rejects WHERE raw IS NOT NULL) r
GROUP BY upload_id, row_no / 5000;

ALTER TABLE debtors DROP COLUMN raw;
ALTER TABLE upload_duplicates DROP COLUMN raw;
ALTER TABLE upload_rejects DROP COLUMN raw;

-- One file row's cells as read, whatever became of the row.
CREATE VIEW upload_raw_rows AS
SELECT r.upload_id, (e.value ->> 0)::integer AS row_no, e.value -> 1 AS cells
FROM upload_raw r CROSS JOIN LATERAL jsonb_array_elements(r.rows::jsonb) e;

UPDATE debtors SET issues = NULLIF(
        (SELECT coalesce(jsonb_agg(i), '[]'::jsonb) FROM jsonb_array_elements(issues) i
         WHERE i ->> 'code' <> 'NAME_TRANSLITERATED'), '[]'::jsonb)
WHERE issues @> '[{"code": "NAME_TRANSLITERATED"}]';

-- Every finding of every debtor, the transliteration warning included (the words are those
-- of src/jobs/validation/rules.rs, checked by a test).
CREATE VIEW debtor_findings AS
SELECT d.id AS debtor_id, d.upload_id, d.row_no, i ->> 'code' AS code, i ->> 'field' AS field,
       i ->> 'severity' AS severity, i ->> 'message' AS message, i ->> 'suggestion' AS suggestion
FROM debtors d CROSS JOIN LATERAL jsonb_array_elements(d.issues) i
UNION ALL
SELECT d.id, d.upload_id, d.row_no, 'NAME_TRANSLITERATED', 'name', 'warning',
       format('name ''%s'' has characters outside the SEPA set; it will be sent as ''%s''',
              d.name, d.sepa_name),
       d.sepa_name
FROM debtors d WHERE d.sepa_name IS NOT NULL;

-- Uploads in progress were staged in the earlier chunk format: start them again from their
-- file, as 20261201000001 did (the sweeper re-drives a stale pending upload).
CREATE TEMP TABLE in_progress ON COMMIT DROP AS
    SELECT u.id, NOT EXISTS (
        SELECT 1 FROM debtors d JOIN upload_duplicates x ON x.debtor_id = d.id
        WHERE d.upload_id = u.id AND x.upload_id <> u.id) AS restartable
    FROM uploads u WHERE u.status IN ('splitting', 'importing');
UPDATE uploads SET status = 'failed', finished_at = now(), updated_at = now(), content_claim = NULL,
    error = 'this upload was in progress when finworker was upgraded and could not be resumed; upload the file again'
WHERE id IN (SELECT id FROM in_progress WHERE NOT restartable);
DELETE FROM upload_duplicates WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
DELETE FROM upload_rejects WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
DELETE FROM upload_raw WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
DELETE FROM debtors WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
DELETE FROM upload_chunks WHERE upload_id IN (SELECT id FROM in_progress WHERE restartable);
UPDATE uploads SET status = 'pending', chunks_total = NULL, chunks_staged = 0, chunks_done = 0,
    chunks_validated = 0, rows_seen = 0, rows_blank = 0, rows_imported = 0, rows_duplicate = 0,
    rows_rejected = 0, rows_valid = 0, rows_invalid = 0, rows_new = 0, rows_unchanged = 0,
    rows_changed = 0, bytes_read = 0, content_claim = NULL,
    updated_at = now() - interval '1 day',
    note = concat_ws('; ', note, 'restarted from its file by an upgrade of the staging format')
WHERE id IN (SELECT id FROM in_progress WHERE restartable);

-- 3. No per-row foreign-key triggers on the import's tables, for the reason of
--    20261124000002 (debtors): duplicates and rejects are written only by upload_chunk under
--    its chunk lock with the upload's status checked, uploads are never deleted, and the
--    debtor a duplicate names is only deleted when no duplicate names it (uploads::fail).
--    The queued trigger events cost ~3% of the import's Postgres time.
ALTER TABLE upload_duplicates DROP CONSTRAINT upload_duplicates_upload_id_fkey;
ALTER TABLE upload_duplicates DROP CONSTRAINT upload_duplicates_debtor_id_fkey;
ALTER TABLE upload_rejects DROP CONSTRAINT upload_rejects_upload_id_fkey;
