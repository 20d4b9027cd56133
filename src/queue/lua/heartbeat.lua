-- Renew a worker process's lease. ARGV: prefix, worker, lease_ms, register ('1' = first
-- registration of this name). Server clock, not the client's.
-- Returns { 'ok' | 'lost', now_ms }. 'lost': the name is no longer registered — a peer
-- recovered its jobs (the lease had lapsed) or Redis lost its data. The process must stop the
-- jobs it holds and register again under a new name; renewing would resurrect a lease whose
-- jobs already belong to someone else. A lapsed lease that nobody recovered yet is still
-- ours: recovery and this script are atomic with each other, so renewing it is safe.
local p, w, lease, register = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local workers = p .. ':workers'
if register ~= '1' and not redis.call('ZSCORE', workers, w) then
  return { 'lost', now }
end
redis.call('ZADD', workers, now + lease, w)
return { 'ok', now }
