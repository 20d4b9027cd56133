-- Paused queues (`finworker queues pause <queue>`): the record. Redis holds a copy that every
-- fetch checks; it is rebuilt from this table at start-up and by the sweeper, so a pause
-- survives restarts of every process and of Redis.
CREATE TABLE queue_pauses (
    queue      text PRIMARY KEY,
    paused_by  text NOT NULL,
    reason     text,
    paused_at  timestamptz NOT NULL DEFAULT now()
);
