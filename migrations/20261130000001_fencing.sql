-- Fencing: a job attempt that lost its lease (its worker froze, was partitioned or crashed and
-- a peer took the job over) must not commit business state. Every attempt carries a token
-- (job id, attempt). Recovery revokes the attempts it takes over HERE, in Postgres, before the
-- job becomes fetchable again; handlers that write business state take the token's row lock
-- inside their own transaction (`Fence::check`), so a revoked attempt cannot commit and a
-- revocation waits for a commit that is already under way.
CREATE TABLE job_fences (
    job_id            text        PRIMARY KEY,
    -- attempts up to this number were taken over by recovery: they may not commit.
    revoked_through   integer     NOT NULL DEFAULT 0,
    -- the highest attempt that passed a fence check (committed business state, or tried to).
    committed_attempt integer     NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_fences_updated_at ON job_fences (updated_at);

-- `stale`: the attempt finished after its lease had been taken over; its writes were refused
-- by fencing (or it had none). A double run stays visible: every attempt keeps its own row.
ALTER TABLE job_runs DROP CONSTRAINT job_runs_status_check;
ALTER TABLE job_runs ADD CONSTRAINT job_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'dead', 'interrupted', 'stale', 'snoozed'));

-- test_job's one business effect (it exists to exercise the runtime): a fenced insert per
-- attempt that asked for it, so tests can count how many attempts committed.
CREATE TABLE test_job_effects (
    job_id     text        NOT NULL,
    attempt    integer     NOT NULL,
    worker     text        NOT NULL,
    label      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt)
);
