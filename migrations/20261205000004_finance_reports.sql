-- Finance downloads: a billing run's attempts, and the chargebacks and retrieval requests of a period.
ALTER TABLE reports DROP CONSTRAINT reports_kind_check;
ALTER TABLE reports ADD CONSTRAINT reports_kind_check CHECK (kind IN ('vop', 'ledger_sync', 'billing_run', 'returns'));
