-- Retention (issue 14), and the clean-debtors export's report kind: old reports, staged chunks, delivered webhooks and job_runs are
-- pruned by the `retention` job. What is pruned but still referred to keeps its row.

-- A report whose file was deleted by retention: the row stays (who asked, when, how many
-- rows), the link answers 410.
ALTER TABLE reports DROP CONSTRAINT reports_status_check;
ALTER TABLE reports ADD CONSTRAINT reports_status_check
    CHECK (status IN ('pending', 'ready', 'failed', 'expired'));
ALTER TABLE reports ADD COLUMN expired_at timestamptz;

-- A delivery that a transaction event, a chargeback or a retrieval request points to keeps
-- its row (the audit trail's link) but loses its raw body and headers when it is pruned.
ALTER TABLE webhook_deliveries ADD COLUMN pruned_at timestamptz;
CREATE INDEX chargebacks_delivery ON chargebacks (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX retrieval_requests_delivery ON retrieval_requests (delivery_id) WHERE delivery_id IS NOT NULL;

-- Staged chunks of an upload that is over are deleted by the upload itself; retention
-- deletes what a crash left, once, and notes it here.
ALTER TABLE uploads ADD COLUMN staging_pruned_at timestamptz;

-- The clean-debtors export is a report kind of its own.
ALTER TABLE reports DROP CONSTRAINT reports_kind_check;
ALTER TABLE reports ADD CONSTRAINT reports_kind_check
    CHECK (kind IN ('vop', 'ledger_sync', 'billing_run', 'returns', 'clean_debtors'));
