-- The authoritative record of job executions (Redis runs without persistence).
-- One row per attempt: "what happened to job X" is answerable from SQL alone.
CREATE TABLE job_runs (
    job_id      text        NOT NULL, -- UUID text for our producers; text so a foreign id is still recorded
    attempt     integer     NOT NULL CHECK (attempt >= 1),
    job_type    text        NOT NULL,
    worker      text        NOT NULL,
    -- running: started, not finished yet (written for executions older than audit_running_after)
    -- succeeded | failed (will be retried) | dead (final failure, see dead_jobs)
    -- interrupted: the worker process died or was stopped during this attempt
    status      text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'dead', 'interrupted')),
    error       text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    duration_ms bigint,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX job_runs_started_at ON job_runs (started_at);
CREATE INDEX job_runs_type_status ON job_runs (job_type, status);

-- The dead-letter store: jobs that exhausted their attempts or failed permanently.
-- Kept in Postgres so it survives a Redis restart; `finworker jobs retry` puts them back.
CREATE TABLE dead_jobs (
    job_id      text        PRIMARY KEY,
    job_type    text        NOT NULL,
    payload     text        NOT NULL,
    attempts    integer     NOT NULL,
    last_error  text        NOT NULL,
    enqueued_at timestamptz,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_jobs_type_failed_at ON dead_jobs (job_type, failed_at);
