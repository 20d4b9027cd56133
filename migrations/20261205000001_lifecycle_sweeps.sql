-- Transaction lifecycle, second part (issue 13): reconciliation's hard-age flag, ledger sync
-- by date, chargeback and retrieval sweeps, the BIC auto-blacklist and the per-account
-- chargeback-rate guard.

-- Set once when an open attempt (pending, unknown …) outlives lifecycle.*_hard_age: it is
-- flagged for a person (metric + error log), never guessed.
ALTER TABLE billing_attempts ADD COLUMN flagged_at timestamptz;
CREATE INDEX billing_attempts_open ON billing_attempts (created_at)
    WHERE status IN ('submitted', 'unknown', 'pending', 'pending_async');

-- One sync of one account against the gateway over a date window: the ledger (emp_refresh,
-- reconcile by date) or a sweep of chargebacks / retrieval requests by import date.
CREATE TABLE ledger_syncs (
    id                uuid PRIMARY KEY,
    kind              text NOT NULL DEFAULT 'ledger' CHECK (kind IN ('ledger', 'chargebacks', 'retrieval_requests')),
    account           text NOT NULL,
    from_date         date NOT NULL,
    to_date           date NOT NULL,
    status            text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    requested_by      text NOT NULL,
    pages             integer NOT NULL DEFAULT 0,
    seen              integer NOT NULL DEFAULT 0,
    matched           integer NOT NULL DEFAULT 0,
    corrected         integer NOT NULL DEFAULT 0,
    -- Unknown attempts the gateway's record settled (matched by transaction_id).
    repaired          integer NOT NULL DEFAULT 0,
    refused           integer NOT NULL DEFAULT 0,
    missing_locally   integer NOT NULL DEFAULT 0,
    missing_remotely  integer NOT NULL DEFAULT 0,
    error             text,
    report_id         uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CHECK (from_date <= to_date)
);
CREATE INDEX ledger_syncs_account ON ledger_syncs (account, created_at);

-- Every difference a sync found, one row each (the report lists them).
CREATE TABLE ledger_sync_items (
    sync_id         uuid NOT NULL REFERENCES ledger_syncs (id) ON DELETE CASCADE,
    item_no         integer NOT NULL,
    -- corrected | repaired | refused (the state machine would not apply it) |
    -- missing_locally (the gateway has it, we do not) | missing_remotely (we sent it, the
    -- gateway has no record in the window); sweeps: recorded (new chargeback or retrieval
    -- request), backfilled (a reason code filled in), unmatched (no attempt of ours).
    kind            text NOT NULL CHECK (kind IN ('corrected', 'repaired', 'refused', 'missing_locally',
                        'missing_remotely', 'recorded', 'backfilled', 'unmatched')),
    reason_code     text,
    attempt_id      bigint,
    unique_id       text,
    transaction_id  text,
    local_status    text,
    remote_status   text,
    amount_minor    bigint,
    currency        text,
    at              timestamptz,
    PRIMARY KEY (sync_id, item_no)
);

-- How far each account's daily sweeps got (ledger, chargebacks, retrieval requests): the next
-- sweep starts from the day after, less the overlap.
CREATE TABLE sync_checkpoints (
    account     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('ledger', 'chargebacks', 'retrieval_requests')),
    last_date   date NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, kind)
);

-- Why a blacklist entry exists, in figures (the BIC auto-blacklist's stats at decision time).
ALTER TABLE blacklist ADD COLUMN stats_snapshot jsonb;

-- Every run of the BIC rule's decision for one BIC (blacklisted or not), with its figures.
CREATE TABLE bic_decisions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bic           text NOT NULL,
    window_days   integer NOT NULL,
    transactions  integer NOT NULL,
    chargebacks   integer NOT NULL,
    blacklisted   boolean NOT NULL,
    decided_at    timestamptz NOT NULL DEFAULT now()
);

-- The chargeback-rate guard: an account on hold starts and continues no billing run until ops
-- release it (`finworker accounts release <name>`).
ALTER TABLE gateway_accounts
    ADD COLUMN hold_reason text,
    ADD COLUMN hold_at timestamptz,
    ADD COLUMN hold_figures jsonb;

-- Chargebacks and retrieval requests may be found by sweeps before any notification.
ALTER TABLE transaction_events DROP CONSTRAINT transaction_events_source_check;
ALTER TABLE transaction_events ADD CONSTRAINT transaction_events_source_check
    CHECK (source IN ('send', 'webhook', 'reconcile', 'ledger_sync', 'chargeback_sweep', 'retrieval_sweep', 'ops'));

-- The ledger-sync report is downloaded like the VOP report.
ALTER TABLE reports DROP CONSTRAINT reports_kind_check;
ALTER TABLE reports ADD CONSTRAINT reports_kind_check CHECK (kind IN ('vop', 'ledger_sync'));

-- A run paused by the chargeback-rate guard (its account is held).
ALTER TABLE billing_runs DROP CONSTRAINT billing_runs_paused_by_check;
ALTER TABLE billing_runs ADD CONSTRAINT billing_runs_paused_by_check
    CHECK (paused_by IN ('ops', 'breaker', 'chargeback_guard'));

-- When the sweeper last handed a queued delivery out again (its job was lost).
ALTER TABLE webhook_deliveries ADD COLUMN last_queued_at timestamptz;
