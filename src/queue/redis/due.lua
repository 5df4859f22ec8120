-- ARGV: P, now. About how many tasks a dequeue over every queue that is
-- not paused could lease now: ready ones, delayed ones now due, expired
-- leases. Read only; no prelude (the service's poller asks it often).
local P, NOW = ARGV[1], ARGV[2]
local n = redis.call('ZCOUNT', P .. 'delayed', '-inf', NOW) + redis.call('ZCOUNT', P .. 'leases', '-inf', NOW)
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  if redis.call('SISMEMBER', P .. 'paused', q) == 0 then n = n + redis.call('ZCARD', P .. 'ready:' .. q) end
end
return n
