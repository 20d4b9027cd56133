-- Billing: gateway accounts, debtor profiles, the blacklist, billing runs with their items, and
-- billing attempts. Money is bigint minor units everywhere. The guarantees that matter are
-- constraints here, not code: one live attempt per profile and cycle (partial unique index),
-- one transaction_id per attempt, an attempt written before its gateway call.

-- Genesis merchant accounts. Declared in configuration ([gateway.accounts.<name>]) and synced
-- here at start; the password never is: `password_env` names the environment variable.
CREATE TABLE gateway_accounts (
    name               text PRIMARY KEY CHECK (name ~ '^[a-z0-9_]{1,40}$'),
    gateway            text NOT NULL,
    endpoint           text NOT NULL,
    terminal_token     text NOT NULL,
    username           text NOT NULL,
    password_env       text NOT NULL,
    currency           text NOT NULL,
    rate_limit         integer NOT NULL CHECK (rate_limit > 0),
    breaker            jsonb NOT NULL,
    -- Debits submitted through the account in one calendar month (UTC), at most; NULL: none.
    monthly_cap_minor  bigint CHECK (monthly_cap_minor > 0),
    enabled            boolean NOT NULL,
    synced_at          timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- What an account has committed in a month: live attempts' amounts (submitted, pending,
-- unknown, approved). Raised in the claim transaction, under the account row's lock, before
-- any call; lowered when an attempt ends declined or in error. The monthly cap reads it.
CREATE TABLE account_month_totals (
    account          text NOT NULL REFERENCES gateway_accounts (name),
    month            date NOT NULL,
    committed_minor  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account, month)
);

-- One profile per IBAN, keyed by HMAC-SHA256(privacy.iban_key, normalised IBAN) in full (a
-- shortened key could merge two debtors' histories). A profile has one billing model at a
-- time and it never changes silently.
CREATE TABLE debtor_profiles (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    iban_hash               bytea NOT NULL UNIQUE CHECK (length(iban_hash) = 32),
    billing_model           text NOT NULL,
    billing_amount_minor    bigint NOT NULL CHECK (billing_amount_minor > 0),
    currency                text NOT NULL,
    -- The account recurring cycles bill through (the one of its first run).
    account                 text REFERENCES gateway_accounts (name),
    -- The debtor line recurring cycles bill (the latest one seen).
    last_debtor_id          bigint,
    active                  boolean NOT NULL DEFAULT true,
    deactivated_reason      text,
    lifetime_charged_minor  bigint NOT NULL DEFAULT 0,
    last_billed_at          timestamptz,
    last_success_at         timestamptz,
    next_bill_at            timestamptz,
    chargebacked_at         timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX debtor_profiles_due ON debtor_profiles (next_bill_at)
    WHERE active AND billing_model <> 'legacy';

-- Who may never be debited. IBANs by keyed hash only (exact); names, e-mails and BICs by
-- their normal form (lower-case name and e-mail, upper-case BIC), exact or as a prefix.
CREATE TABLE blacklist (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('iban', 'name', 'email', 'bic')),
    iban_hash   bytea,
    value       text,
    match       text NOT NULL DEFAULT 'exact' CHECK (match IN ('exact', 'prefix')),
    reason      text NOT NULL,
    source      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'iban') = (iban_hash IS NOT NULL)),
    CHECK (kind = 'iban' OR (value IS NOT NULL AND value <> '')),
    CHECK (kind <> 'iban' OR match = 'exact')
);
CREATE UNIQUE INDEX blacklist_iban ON blacklist (iban_hash) WHERE kind = 'iban';
CREATE UNIQUE INDEX blacklist_value ON blacklist (kind, value, match) WHERE kind <> 'iban';

-- A billing run: one upload (or the due recurring profiles) billed through one account.
CREATE TABLE billing_runs (
    id                uuid PRIMARY KEY,
    upload_id         uuid REFERENCES uploads (id),
    account           text NOT NULL REFERENCES gateway_accounts (name),
    model             text NOT NULL,
    source            text NOT NULL CHECK (source IN ('api', 'cli', 'recurring')),
    dry_run           boolean NOT NULL DEFAULT false,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'running', 'paused', 'completed', 'cancelled')),
    -- Why it is paused (an open breaker pauses it by itself and resumes it).
    pause_reason      text,
    -- Paused by a person (only a person resumes it) or by the breaker (resumes by itself).
    paused_by         text CHECK (paused_by IN ('ops', 'breaker')),
    skip_chargeback_check boolean NOT NULL DEFAULT false,
    -- Total the run may commit, minor units; NULL: none.
    cap_minor         bigint CHECK (cap_minor > 0),
    committed_minor   bigint NOT NULL DEFAULT 0,
    items_total       integer NOT NULL DEFAULT 0,
    batches           integer NOT NULL DEFAULT 0,
    -- Counts and amounts by outcome and by exclusion reason, written when it ends.
    totals            jsonb,
    -- The recurring tick that made it (one run per tick and account).
    recurring_tick    bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (recurring_tick, account)
);
CREATE INDEX billing_runs_open ON billing_runs (updated_at) WHERE status IN ('pending', 'running', 'paused');

-- Every debtor a run looked at, with what happened to it: queued until a batch claims it,
-- then excluded (with its reason) or attempted (the attempt). Nothing is dropped.
CREATE TABLE billing_items (
    run_id        uuid NOT NULL REFERENCES billing_runs (id),
    item_no       integer NOT NULL,
    debtor_id     bigint,
    profile_id    bigint,
    model         text,
    amount_minor  bigint NOT NULL,
    currency      text NOT NULL,
    state         text NOT NULL CHECK (state IN ('queued', 'excluded', 'attempted', 'would_bill')),
    reason        text,
    detail        text,
    attempt_id    bigint,
    decided_at    timestamptz,
    PRIMARY KEY (run_id, item_no),
    CHECK ((state = 'excluded') = (reason IS NOT NULL))
);
CREATE INDEX billing_items_queued ON billing_items (run_id, item_no) WHERE state = 'queued';

-- One debit. The row, with its transaction_id, is committed before the gateway is called;
-- the outcome is written in a later transaction. `submitted` means "sent or about to be, no
-- answer recorded": after a crash it is resolved like `unknown`, by reconciling the id.
CREATE TABLE billing_attempts (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id              uuid REFERENCES billing_runs (id),
    item_no             integer,
    debtor_id           bigint,
    profile_id          bigint NOT NULL REFERENCES debtor_profiles (id),
    account             text NOT NULL REFERENCES gateway_accounts (name),
    model               text NOT NULL,
    -- The collection this debit is for: `line:<debtor id>` (legacy: once per debtor line) or
    -- `due:<date>` (recurring models: the cycle's due date).
    cycle               text NOT NULL,
    amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
    currency            text NOT NULL,
    transaction_id      text NOT NULL UNIQUE CHECK (length(transaction_id) BETWEEN 1 AND 255),
    status              text NOT NULL CHECK (status IN ('submitted', 'unknown', 'pending', 'pending_async',
                            'approved', 'declined', 'error', 'voided', 'chargebacked', 'refunded')),
    unique_id           text UNIQUE,
    gateway_code        integer,
    message             text,
    technical_message   text,
    -- SHA-256 of what was sent: a resend must send the same debit.
    request_hash        text NOT NULL,
    sends               integer NOT NULL DEFAULT 1,
    sent_at             timestamptz NOT NULL,
    -- The last send's answer cannot arrive after this.
    send_deadline       timestamptz NOT NULL,
    answered_at         timestamptz,
    reconcile_count     integer NOT NULL DEFAULT 0,
    last_reconciled_at  timestamptz,
    next_reconcile_at   timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- At most one live debit per profile and cycle, across runs, accounts and processes.
CREATE UNIQUE INDEX billing_attempts_one_live ON billing_attempts (profile_id, cycle)
    WHERE status IN ('submitted', 'unknown', 'pending', 'pending_async', 'approved');
CREATE INDEX billing_attempts_unresolved ON billing_attempts (next_reconcile_at)
    WHERE status IN ('submitted', 'unknown', 'pending', 'pending_async');
CREATE INDEX billing_attempts_run ON billing_attempts (run_id);
CREATE INDEX billing_attempts_profile ON billing_attempts (profile_id, created_at);
CREATE INDEX billing_attempts_debtor ON billing_attempts (debtor_id);
