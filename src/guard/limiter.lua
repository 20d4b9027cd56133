-- Shared rate limit: hands out send times spaced 1/rate apart across every process (GCRA
-- with no burst). KEYS[1] = the provider's next free slot (µs, Redis clock); ARGV[1] = spacing
-- in µs. Returns how many µs from now the caller may send.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local nxt = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.floor((nxt - now) / 1000) + 60000)
return slot - now
