-- Enqueue jobs atomically. ARGV: prefix, idempotency_ttl_ms, then per job 7 values:
--   id, job_type (= queue), payload (JSON text), delay_ms, idempotency_key ('' = none),
--   max_attempts ('' = queue default), prior_attempts (0, or the attempts of a re-queued dead job)
-- Returns per job: the job id (the first job's id for a duplicate) and 1 if it was a duplicate, else 0.
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local queues = {}
for i = 3, #ARGV, 7 do
  local id, q, payload, delay, idem, maxa, prior = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local jk = p .. ':job:' .. id
  local existing = nil
  if idem ~= '' then
    local ik = p .. ':idem:' .. q .. ':' .. idem
    existing = redis.call('GET', ik)
    if not existing then
      redis.call('SET', ik, id, 'PX', ttl)
    end
  end
  -- Re-pushing a known id (a retried dead job, a repeated cron tick) must not queue it twice.
  if not existing and redis.call('EXISTS', jk) == 1 then
    existing = id
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 1
  else
    redis.call('HSET', jk, 'type', q, 'payload', payload, 'attempt', prior, 'failures', 0, 'orphans', 0, 'enqueued_at', now)
    if maxa ~= '' then redis.call('HSET', jk, 'max_attempts', maxa) end
    if idem ~= '' then redis.call('HSET', jk, 'idem', idem) end
    if delay > 0 then
      redis.call('ZADD', p .. ':q:' .. q .. ':sched', now + delay, id)
    else
      redis.call('RPUSH', p .. ':q:' .. q .. ':ready', id)
    end
    queues[q] = true
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
for q, _ in pairs(queues) do
  redis.call('SADD', p .. ':queues', q)
end
return out
