-- ARGV: P, now, task id, lease id.
-- Hands back a task the lease holds without spending an attempt.
local id, lease = ARGV[3], ARGV[4]
local t = fetch(id)
local refused = not_held(t, id, lease)
if refused then return refused end
redis.call('ZREM', P .. 'leases', id)
update(t, 'status', 'PENDING', 'attempts', math.max(tonumber(t[F.attempts]) - 1, 0), 'worker_id', '',
  'lease_id', '', 'lease_expires_at', 0, 'updated_at', NOW)
move(t[F.queue], 'IN_PROGRESS', 'PENDING')
file_pending(id, t[F.queue], tonumber(t[F.priority]), tonumber(t[F.run_at]),
  tonumber(redis.call('HGET', tkey(id), 'seq')))
return finish(ok(t))
