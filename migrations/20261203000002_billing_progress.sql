-- Liveness of running billing runs, apart from the run's row: claims share-lock that row, so a
-- frequent write to it (a heartbeat) would make every claim queue behind it. Batch jobs touch
-- this row every few seconds; the sweeper re-drives a run whose progress stood still.
CREATE TABLE billing_run_progress (
    run_id  uuid PRIMARY KEY REFERENCES billing_runs (id),
    at      timestamptz NOT NULL
);
