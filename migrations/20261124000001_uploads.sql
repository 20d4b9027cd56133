-- Upload ingestion: uploads, their staged chunks, the debtors they import, and where every
-- other row went (duplicates, rejects). Invariant per completed upload:
--   rows_seen = rows_imported + rows_duplicate + rows_rejected.

CREATE TABLE uploads (
    id              uuid PRIMARY KEY,
    object_key      text NOT NULL,
    file_name       text NOT NULL,
    sheet           text,
    format          text,
    encoding        text,
    delimiter       text,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'splitting', 'importing', 'completed', 'failed')),
    size_bytes      bigint,
    bytes_read      bigint NOT NULL DEFAULT 0,
    chunk_rows      integer NOT NULL CHECK (chunk_rows > 0),
    chunks_total    integer,
    chunks_staged   integer NOT NULL DEFAULT 0,
    chunks_done     integer NOT NULL DEFAULT 0,
    rows_seen       bigint NOT NULL DEFAULT 0,
    rows_blank      bigint NOT NULL DEFAULT 0,
    rows_imported   bigint NOT NULL DEFAULT 0,
    rows_duplicate  bigint NOT NULL DEFAULT 0,
    rows_rejected   bigint NOT NULL DEFAULT 0,
    columns         jsonb,
    error           text,
    note            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    split_at        timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_created_at ON uploads (created_at);

-- One row per staged chunk; done_at makes a chunk import happen once.
CREATE TABLE upload_chunks (
    upload_id   uuid NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    chunk_no    integer NOT NULL,
    first_row   integer NOT NULL,
    last_row    integer NOT NULL,
    rows        integer NOT NULL,
    staged_key  text NOT NULL,
    imported    integer,
    duplicates  integer,
    rejected    integer,
    done_at     timestamptz,
    PRIMARY KEY (upload_id, chunk_no)
);

-- Debtors, deduplicated on (iban, reference): iban normalised (no spaces, upper case),
-- reference trimmed ('' when the file has none).
CREATE TABLE debtors (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    upload_id     uuid NOT NULL REFERENCES uploads (id),
    row_no        integer NOT NULL,
    reference     text NOT NULL,
    first_name    text,
    last_name     text,
    name          text NOT NULL,
    email         text,
    iban          text NOT NULL,
    bic           text,
    amount_minor  bigint NOT NULL,
    currency      text NOT NULL,
    mandate_id    text,
    mandate_date  date,
    country       text,
    usage         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT debtors_dedup_key UNIQUE (iban, reference),
    CONSTRAINT debtors_upload_row UNIQUE (upload_id, row_no)
);

-- Rows that repeat a debtor already imported (by this upload or an earlier one).
CREATE TABLE upload_duplicates (
    upload_id  uuid NOT NULL REFERENCES uploads (id),
    row_no     integer NOT NULL,
    debtor_id  bigint NOT NULL REFERENCES debtors (id),
    PRIMARY KEY (upload_id, row_no)
);

-- Rows that could not be imported, with where and why.
CREATE TABLE upload_rejects (
    upload_id    uuid NOT NULL REFERENCES uploads (id),
    row_no       integer NOT NULL,
    column_name  text,
    field        text,
    reason       text NOT NULL,
    value        text,
    PRIMARY KEY (upload_id, row_no)
);
