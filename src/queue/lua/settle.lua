-- Record the outcome of jobs a worker held. ARGV: prefix, worker, then per job 5 values:
--   op, id, queue, delay_ms, error
-- op: 'ok' (done: delete), 'dead' (already stored in Postgres dead_jobs: delete),
--     'retry' (count a failure, run again after delay_ms), 'release' (taken but never started).
-- Every change is conditional on the worker still holding the job (compare-and-set), so a
-- late settle from a worker declared dead cannot undo what recovery did — except that a
-- finished job is removed wherever it waits, so it does not run a second time.
local p, w = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wip = p .. ':wip:' .. w
local settled = 0
for i = 3, #ARGV, 5 do
  local op, id, q, delay, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4]
  local jk = p .. ':job:' .. id
  local owned = redis.call('HDEL', wip, id) == 1
  if owned then
    redis.call('ZREM', p .. ':q:' .. q .. ':active', id)
  end
  if op == 'ok' or op == 'dead' then
    if not owned then
      redis.call('LREM', p .. ':q:' .. q .. ':ready', 0, id)
      redis.call('ZREM', p .. ':q:' .. q .. ':sched', id)
    end
    redis.call('DEL', jk)
    settled = settled + 1
  elseif op == 'retry' then
    if owned and redis.call('EXISTS', jk) == 1 then
      redis.call('HINCRBY', jk, 'failures', 1)
      redis.call('HSET', jk, 'last_error', err)
      redis.call('ZADD', p .. ':q:' .. q .. ':sched', now + delay, id)
      settled = settled + 1
    end
  elseif op == 'release' then
    if owned and redis.call('EXISTS', jk) == 1 then
      redis.call('HINCRBY', jk, 'attempt', -1)
      redis.call('LPUSH', p .. ':q:' .. q .. ':ready', id)
      settled = settled + 1
    end
  end
end
return settled
