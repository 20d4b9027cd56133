-- Depth of one queue. ARGV: prefix, queue.
-- Returns: ready, scheduled, active, due-now among scheduled, age in ms of the oldest ready job (-1 if none).
local p, q = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ready = p .. ':q:' .. q .. ':ready'
local sched = p .. ':q:' .. q .. ':sched'
local age = -1
local head = redis.call('LINDEX', ready, 0)
if head then
  local at = redis.call('HGET', p .. ':job:' .. head, 'enqueued_at')
  if at then age = now - tonumber(at) end
end
local oldest_due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if #oldest_due > 0 then
  local due_age = now - tonumber(oldest_due[2])
  if due_age > age then age = due_age end
end
return {
  redis.call('LLEN', ready),
  redis.call('ZCARD', sched),
  redis.call('ZCARD', p .. ':q:' .. q .. ':active'),
  redis.call('ZCOUNT', sched, '-inf', now),
  age,
}
