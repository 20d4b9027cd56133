-- Enqueue jobs atomically. ARGV: prefix, idempotency_ttl_ms, then per job 9 values:
--   id, job_type (= queue), payload (JSON text), delay_ms, idempotency_key ('' = none),
--   max_attempts ('' = queue default), prior_attempts (0, or the attempts of a re-queued dead job),
--   payload_hash (compared when a key repeats), redrive ('1': if the key's job is no longer
--   live in redis — finished, or lost with redis's data, wholly or in part — push a new one
--   under the key)
-- Returns per job: the job id (the first job's id for a duplicate) and 0 (new), 1 (duplicate:
-- same key, same payload, or the id already queued) or 2 (the key was used for another payload).
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local queues = {}
-- A job is live while it is queued (ready, scheduled), taken (active) or parked for recovery;
-- done and dead jobs' hashes are deleted. A hash in none of them is an orphan of a partial
-- loss (an eviction, a delete that was not atomic): it is removed, and its key re-driven.
local function live(id, q)
  local jk = p .. ':job:' .. id
  if redis.call('EXISTS', jk) == 0 then return false end
  local base = p .. ':q:' .. q
  if redis.call('ZSCORE', base .. ':active', id) or redis.call('ZSCORE', base .. ':sched', id)
    or redis.call('HEXISTS', p .. ':recovering', id) == 1 or redis.call('LPOS', base .. ':ready', id) then
    return true
  end
  redis.call('DEL', jk)
  return false
end
for i = 3, #ARGV, 9 do
  local id, q, payload, delay, idem, maxa, prior, hash, redrive =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local jk = p .. ':job:' .. id
  local existing, flag = nil, 1
  if idem ~= '' then
    local ik = p .. ':idem:' .. q .. ':' .. idem
    local v = redis.call('GET', ik)
    if v then
      local first, first_hash = string.match(v, '^([^ ]*) ?(.*)$')
      if redrive == '1' and not live(first, q) then
        v = nil
      else
        existing = first
        if first_hash ~= '' and hash ~= '' and first_hash ~= hash then flag = 2 end
      end
    end
    if not v then
      redis.call('SET', ik, id .. ' ' .. hash, 'PX', ttl)
    end
  end
  -- Re-pushing a known id (a retried dead job, a repeated cron tick) must not queue it twice.
  if not existing and redis.call('EXISTS', jk) == 1 then
    existing = id
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = flag
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
