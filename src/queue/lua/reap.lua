-- Take back the jobs of worker processes whose lease lapsed (crashed, frozen, partitioned).
-- ARGV: prefix, worker ('' = every expired worker; a name = that worker now, for a process
-- that gives up at the end of its drain deadline), except (a name never reaped here: the
-- caller's own — a process that is running is not dead, whatever its lease says; if it froze,
-- its peers recover it).
-- The jobs are PARKED in P:recovering, not made runnable: the caller first revokes the cut
-- attempts in Postgres (fencing), then calls recover.lua. A caller that dies in between leaves
-- them parked; any process re-drives parked entries older than a lease.
-- Returns per job 6 values: worker, id, queue, attempt, job_type, started_at_ms.
local p, only, except = ARGV[1], ARGV[2], ARGV[3] or ''
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local workers
if only ~= '' then
  workers = { only }
else
  workers = {}
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', p .. ':workers', '-inf', now, 'LIMIT', 0, 21)) do
    if w ~= except and #workers < 20 then workers[#workers + 1] = w end
  end
end
local out = {}
for _, w in ipairs(workers) do
  local wip = p .. ':wip:' .. w
  local entries = redis.call('HGETALL', wip)
  for i = 1, #entries, 2 do
    local id, q = entries[i], entries[i + 1]
    local jk = p .. ':job:' .. id
    local started = redis.call('ZSCORE', p .. ':q:' .. q .. ':active', id) or now
    redis.call('ZREM', p .. ':q:' .. q .. ':active', id)
    local f = redis.call('HMGET', jk, 'attempt', 'type')
    if f[2] then
      local attempt = f[1] or '0'
      redis.call('HSET', p .. ':recovering', id,
        q .. '\t' .. attempt .. '\t' .. w .. '\t' .. started .. '\t' .. f[2] .. '\t' .. now)
      out[#out + 1] = w
      out[#out + 1] = id
      out[#out + 1] = q
      out[#out + 1] = attempt
      out[#out + 1] = f[2]
      out[#out + 1] = started
    end
  end
  redis.call('DEL', wip)
  redis.call('ZREM', p .. ':workers', w)
end
return out
