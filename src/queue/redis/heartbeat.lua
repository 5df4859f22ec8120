-- ARGV: P, now, task id, lease id, lease_ms.
local id, lease, lease_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
local t = fetch(id)
local refused = not_held(t, id, lease)
if refused then return refused end
update(t, 'lease_expires_at', NOW + lease_ms, 'updated_at', NOW)
redis.call('ZADD', P .. 'leases', NOW + lease_ms, id)
return ok(t)
