-- Validation, VOP/BAV verification and reports.
--
-- Validation and verification work per upload chunk (the row ranges of upload_chunks), so a
-- million debtors are checked by many jobs in parallel; each chunk is stamped once.

ALTER TABLE upload_chunks
    ADD COLUMN validated_at timestamptz,
    ADD COLUMN valid        integer,
    ADD COLUMN invalid      integer,
    ADD COLUMN verified_at  timestamptz;

ALTER TABLE uploads
    ADD COLUMN chunks_validated integer NOT NULL DEFAULT 0,
    ADD COLUMN rows_valid       bigint NOT NULL DEFAULT 0,
    ADD COLUMN rows_invalid     bigint NOT NULL DEFAULT 0,
    ADD COLUMN validated_at     timestamptz,
    ADD COLUMN chunks_verified  integer NOT NULL DEFAULT 0,
    ADD COLUMN verified_at      timestamptz;

-- One row per validated debtor. sepa_name is the name as it can be sent (transliterated to
-- the SEPA character set when the original is outside it).
CREATE TABLE debtor_checks (
    debtor_id   bigint PRIMARY KEY,
    upload_id   uuid NOT NULL,
    valid       boolean NOT NULL,
    sepa_name   text,
    checked_at  timestamptz NOT NULL DEFAULT now()
);

-- Why a debtor is invalid (severity 'error') or what to look at (severity 'warning').
-- code is stable (documented in docs/validation.md); message is for people.
CREATE TABLE debtor_issues (
    debtor_id   bigint NOT NULL,
    upload_id   uuid NOT NULL,
    code        text NOT NULL,
    field       text NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('error', 'warning')),
    message     text NOT NULL,
    suggestion  text
);
CREATE INDEX debtor_issues_debtor ON debtor_issues (debtor_id);
CREATE INDEX debtor_issues_upload ON debtor_issues (upload_id);

-- VOP (name check) and BAV (account check) result per debtor.
CREATE TABLE vop_results (
    debtor_id       bigint PRIMARY KEY,
    upload_id       uuid NOT NULL,
    provider        text NOT NULL,
    -- match | close_match | no_match | not_possible | error
    vop_result      text NOT NULL,
    suggested_name  text,
    vop_reference   text,
    -- valid | closed | no_direct_debit | not_possible | error
    bav_result      text NOT NULL,
    bav_reference   text,
    -- Set when the provider refused the request (4xx): what it said.
    error           text,
    from_cache      boolean NOT NULL DEFAULT false,
    checked_at      timestamptz NOT NULL
);
CREATE INDEX vop_results_upload ON vop_results (upload_id);

-- Answers reused for the same (provider, IBAN, normalised name) within vop.cache_ttl.
CREATE TABLE vop_cache (
    provider        text NOT NULL,
    iban            text NOT NULL,
    name_key        text NOT NULL,
    vop_result      text NOT NULL,
    suggested_name  text,
    vop_reference   text,
    bav_result      text NOT NULL,
    bav_reference   text,
    checked_at      timestamptz NOT NULL,
    PRIMARY KEY (provider, iban, name_key)
);

CREATE TABLE reports (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('vop')),
    format       text NOT NULL CHECK (format IN ('csv', 'xlsx')),
    upload_id    uuid,
    date_from    date,
    date_to      date,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ready', 'failed')),
    object_key   text,
    file_name    text,
    rows         bigint,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
