-- Record the outcome of jobs a worker held. ARGV: prefix, worker, then per job 5 values:
--   op, id, queue, delay_ms, error
-- op: 'ok' (done: delete), 'dead' (already stored in Postgres dead_jobs: delete),
--     'retry' (count a failure, run again after delay_ms),
--     'snooze' (run again after delay_ms without counting a failure),
--     'release' (taken but never started).
-- Every change is conditional on the worker still holding the job (compare-and-set): a late
-- settle from a worker whose lease was taken over changes nothing — the job now belongs to
-- its new owner (or waits for one), and that owner's state is never deleted or overwritten.
local p, w = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wip = p .. ':wip:' .. w
local settled = 0
for i = 3, #ARGV, 5 do
  local op, id, q, delay, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4]
  local jk = p .. ':job:' .. id
  if redis.call('HDEL', wip, id) == 1 then
    redis.call('ZREM', p .. ':q:' .. q .. ':active', id)
    settled = settled + 1
    if op == 'ok' or op == 'dead' then
      redis.call('DEL', jk)
    elseif redis.call('EXISTS', jk) == 1 then
      if op == 'retry' then
        redis.call('HINCRBY', jk, 'failures', 1)
        redis.call('HSET', jk, 'last_error', err)
        redis.call('ZADD', p .. ':q:' .. q .. ':sched', now + delay, id)
      elseif op == 'snooze' then
        redis.call('HINCRBY', jk, 'snoozes', 1)
        redis.call('HSET', jk, 'last_error', err)
        redis.call('ZADD', p .. ':q:' .. q .. ':sched', now + delay, id)
      elseif op == 'release' then
        redis.call('HINCRBY', jk, 'attempt', -1)
        redis.call('LPUSH', p .. ':q:' .. q .. ':ready', id)
      end
    end
  end
end
return settled
