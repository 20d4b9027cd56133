-- Findings are read through their debtor (debtors (upload_id, row_no) → debtor_issues
-- (debtor_id)); a second index by upload cost validation about a tenth of its time
-- (one more index entry per finding, ~0.9 per debtor on real files).
DROP INDEX debtor_issues_upload;
