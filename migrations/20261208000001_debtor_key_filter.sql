-- A filter over the keyed IBAN hashes of the debtors of completed uploads, so that linking a
-- new upload's rows to earlier debtors probes the debtors_iban_key index only for keys that
-- may be there (docs/uploads.md, Performance: on a 10M-row table the probe was two thirds of
-- the extra time). One bit per key: bit = the key's top 27 bits; 2^27 bits in 16,384 slots of
-- 1 KiB. A bit set only means "maybe"; a bit clear means no debtor of a filtered upload has
-- that key. Bits are never cleared (debtors removed later only cost extra probes).

-- Whether the upload's keys are in the filter. An upload completed but not filtered yet (just
-- completed, or from before this migration) makes imports probe every key.
ALTER TABLE uploads ADD COLUMN key_filtered boolean NOT NULL DEFAULT false;
CREATE INDEX uploads_unfiltered ON uploads (finished_at) WHERE status = 'completed' AND NOT key_filtered;

-- One row. Each change to the filter takes this row's lock first, so versions are given out in
-- commit order: a reader that sees version V sees every slot written at V or before.
CREATE TABLE debtor_key_filter_meta (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    version  bigint NOT NULL
);
INSERT INTO debtor_key_filter_meta (id, version) VALUES (true, 0);

CREATE TABLE debtor_key_filter (
    slot     integer PRIMARY KEY CHECK (slot >= 0 AND slot < 16384),
    -- 128 little-endian u64 words: bits slot*8192 .. slot*8192+8191.
    bits     bytea NOT NULL CHECK (length(bits) = 1024),
    -- The meta version of the change that last wrote it.
    version  bigint NOT NULL
);
