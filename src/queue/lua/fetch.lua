-- Take up to N jobs of one queue for one worker. ARGV: prefix, queue, worker, n
-- First moves due scheduled jobs (delays, retries) to the ready list, at most 1000 per call:
-- bounded, so a backlog of any size drains in slices instead of overflowing unpack().
-- Returns 'ok' then per job 9 values: id, job_type, payload, attempt, failures, orphans,
-- max_attempts ('' = queue default), enqueued_at_ms, snoozes — as stored: a foreign writer's
-- bad field is judged per job by the caller, never for the batch. A job whose data is missing
-- comes back with an empty job_type. Returns 'unregistered' when the worker's lease has lapsed (it
-- must heartbeat again before taking work nobody would watch). A paused queue gives no jobs.
local p, q, w, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ready = p .. ':q:' .. q .. ':ready'
local sched = p .. ':q:' .. q .. ':sched'
local active = p .. ':q:' .. q .. ':active'
local wip = p .. ':wip:' .. w
local lease = redis.call('ZSCORE', p .. ':workers', w)
if not lease or tonumber(lease) < now then
  return { 'unregistered' }
end
-- A paused queue is fetched by no process (its jobs wait, scheduled ones stay scheduled).
if redis.call('SISMEMBER', p .. ':paused', q) == 1 then
  return { 'ok' }
end
local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  redis.call('ZREM', sched, unpack(due))
  redis.call('RPUSH', ready, unpack(due))
end
local out = { 'ok' }
local ids = redis.call('LPOP', ready, n)
if not ids then
  return out
end
for _, id in ipairs(ids) do
  local jk = p .. ':job:' .. id
  local f = redis.call('HMGET', jk, 'type', 'payload', 'failures', 'orphans', 'max_attempts', 'enqueued_at', 'snoozes')
  local attempt = 0
  if f[1] then
    -- pcall: a foreign writer's non-integer `attempt` must fail that job, not this script.
    attempt = redis.pcall('HINCRBY', jk, 'attempt', 1)
    if type(attempt) == 'table' then attempt = 'bad attempt field' end
  end
  redis.call('HSET', wip, id, q)
  redis.call('ZADD', active, now, id)
  out[#out + 1] = id
  out[#out + 1] = f[1] or ''
  out[#out + 1] = f[2] or ''
  out[#out + 1] = attempt
  out[#out + 1] = f[3] or 0
  out[#out + 1] = f[4] or 0
  out[#out + 1] = f[5] or ''
  out[#out + 1] = f[6] or 0
  out[#out + 1] = f[7] or 0
end
return out
