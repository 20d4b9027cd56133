-- Make parked jobs runnable again, once their cut attempts are revoked in Postgres.
-- ARGV: prefix, then job ids. Each goes to the FRONT of its ready list (a prompt rerun) with
-- orphans + 1. An id no longer parked (another process recovered it) is skipped, so two
-- recoverers never queue a job twice. Returns how many were queued.
local p = ARGV[1]
local parked = p .. ':recovering'
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local v = redis.call('HGET', parked, id)
  if v then
    redis.call('HDEL', parked, id)
    local q = string.match(v, '^([^\t]*)')
    local jk = p .. ':job:' .. id
    if redis.call('EXISTS', jk) == 1 then
      if type(redis.pcall('HINCRBY', jk, 'orphans', 1)) == 'table' then
        redis.call('HSET', jk, 'orphans', 1) -- a foreign writer's bad field
      end
      redis.call('LPUSH', p .. ':q:' .. q .. ':ready', id)
      n = n + 1
    end
  end
end
return n
