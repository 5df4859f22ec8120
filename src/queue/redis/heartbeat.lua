-- ARGV: P, now, task id, lease id, lease_ms.
local id, lease, lease_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
local t = fetch(id)
local refused = not_held(t, id, lease)
if refused then return refused end
local expires = int(NOW + lease_ms)
update(t, 'lease_expires_at', expires, 'updated_at', NOW_ARG)
redis.call('ZADD', P .. 'leases', expires, id)
return ok(t)
