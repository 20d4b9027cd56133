-- Transaction lifecycle (issue 13): webhook deliveries stored before they are acknowledged,
-- an append-only history of every attempt status change, chargebacks and retrieval requests.

-- Every delivery to /api/webhooks/, as received. An accepted one is processed once; a repeat
-- of it (same unique_id, status or event, and payload) is counted on the first, not stored
-- again. Rejected and malformed ones are kept with their reason and never processed.
CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider        text NOT NULL,
    -- As named in the URL (a delivery for an unknown account is stored as rejected).
    account         text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    remote_addr     text,
    headers         jsonb NOT NULL,
    -- The raw body (cut at the size limit for an oversized one; `body_bytes` says how big).
    body            bytea NOT NULL,
    body_bytes      integer NOT NULL,
    unique_id       text,
    transaction_id  text,
    -- The notification's status, or its event when it has one (chargeback, retrieval_request).
    kind            text,
    -- SHA-256 of the sorted form fields: a redelivery of the same notification has the same.
    payload_hash    bytea,
    -- sha1 | sha256 | sha512 when the signature verified.
    signature       text,
    verdict         text NOT NULL CHECK (verdict IN ('accepted', 'rejected', 'malformed')),
    reason          text,
    repeats         integer NOT NULL DEFAULT 0,
    last_repeat_at  timestamptz,
    -- queued → processed | unmatched (no attempt of ours) | failed (after webhooks.max_attempts);
    -- ignored: rejected or malformed, never processed.
    state           text NOT NULL CHECK (state IN ('queued', 'processed', 'unmatched', 'failed', 'ignored')),
    attempts        integer NOT NULL DEFAULT 0,
    processed_at    timestamptz,
    error           text,
    CHECK ((verdict = 'accepted') = (state <> 'ignored'))
);
CREATE UNIQUE INDEX webhook_deliveries_dedup
    ON webhook_deliveries (provider, account, unique_id, kind, payload_hash)
    WHERE verdict = 'accepted';
CREATE INDEX webhook_deliveries_queued ON webhook_deliveries (received_at) WHERE state = 'queued';
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

-- Every change of an attempt's status, whatever caused it; an impossible one is stored with
-- applied = false and not applied. Append-only (a trigger refuses updates, and deletes unless
-- a retention job says so).
CREATE TABLE transaction_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempt_id   bigint NOT NULL REFERENCES billing_attempts (id),
    -- status (a status change), chargeback or retrieval_request (recorded also when the
    -- status does not change).
    event        text NOT NULL DEFAULT 'status' CHECK (event IN ('status', 'chargeback', 'retrieval_request')),
    source       text NOT NULL CHECK (source IN ('send', 'webhook', 'reconcile', 'ledger_sync',
                     'chargeback_sweep', 'ops')),
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    applied      boolean NOT NULL,
    reason_code  text,
    delivery_id  bigint REFERENCES webhook_deliveries (id),
    note         text,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transaction_events_attempt ON transaction_events (attempt_id, id);
CREATE INDEX transaction_events_delivery ON transaction_events (delivery_id) WHERE delivery_id IS NOT NULL;

CREATE FUNCTION transaction_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('finworker.prune', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'transaction_events is append-only';
END $$;
CREATE TRIGGER transaction_events_append_only BEFORE UPDATE OR DELETE ON transaction_events
    FOR EACH ROW EXECUTE FUNCTION transaction_events_append_only();

-- A chargeback (an SDD return) of one of our debits, from a notification or a sweep.
CREATE TABLE chargebacks (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempt_id          bigint REFERENCES billing_attempts (id),
    account             text NOT NULL,
    -- The debit's gateway id.
    original_unique_id  text NOT NULL,
    arn                 text,
    type                text NOT NULL DEFAULT 'chargeback',
    reason_code         text,
    reason_description  text,
    amount_minor        bigint,
    currency            text,
    post_date           date,
    import_date         date,
    source              text NOT NULL,
    delivery_id         bigint REFERENCES webhook_deliveries (id),
    -- What the reason-code policy did: blacklisted the IBAN, deactivated the profile.
    blacklisted         boolean NOT NULL DEFAULT false,
    deactivated         boolean NOT NULL DEFAULT false,
    raw                 jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (original_unique_id, type)
);
CREATE INDEX chargebacks_attempt ON chargebacks (attempt_id);

-- A retrieval request (the debtor's bank asks for the mandate): stored and surfaced, never
-- only logged.
CREATE TABLE retrieval_requests (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempt_id          bigint REFERENCES billing_attempts (id),
    account             text NOT NULL,
    original_unique_id  text NOT NULL,
    arn                 text,
    reason_code         text,
    reason_description  text,
    amount_minor        bigint,
    currency            text,
    post_date           date,
    import_date         date,
    source              text NOT NULL,
    delivery_id         bigint REFERENCES webhook_deliveries (id),
    raw                 jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (original_unique_id)
);
CREATE INDEX retrieval_requests_attempt ON retrieval_requests (attempt_id);

ALTER TABLE billing_attempts ADD COLUMN reason_code text;
