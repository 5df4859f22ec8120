-- ARGV: P, now, task id, lease id, lease_ms.
local id, lease, lease_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
local refused = not_held(id, lease)
if refused then return refused end
redis.call('HSET', tkey(id), 'lease_expires_at', NOW + lease_ms, 'updated_at', NOW)
redis.call('ZADD', P .. 'leases', NOW + lease_ms, id)
return ok(id)
