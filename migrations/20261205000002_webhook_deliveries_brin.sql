-- Deliveries arrive in time order: a BRIN index serves "received since" (listing, replay,
-- retention) at a fraction of a B-tree's cost per insert on the receiver's hot path.
DROP INDEX webhook_deliveries_received;
CREATE INDEX webhook_deliveries_received ON webhook_deliveries USING brin (received_at);
