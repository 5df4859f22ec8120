-- ARGV: P, now, task id.
local id = ARGV[3]
local t = redis.call('HMGET', tkey(id), 'status', 'queue', 'priority', 'run_at', 'seq')
if not t[1] then return {'notfound'} end
if t[1] == 'PENDING' then
  unfile_pending(id, t[2], tonumber(t[3]), tonumber(t[4]), tonumber(t[5]))
elseif t[1] == 'IN_PROGRESS' then
  redis.call('ZREM', P .. 'leases', id)
else
  return {'precondition', 'task ' .. id .. ' is ' .. t[1] .. '; only PENDING and IN_PROGRESS tasks can be cancelled'}
end
redis.call('HSET', tkey(id), 'status', 'CANCELLED', 'lease_id', '', 'lease_expires_at', 0, 'updated_at', NOW)
move(t[2], t[1], 'CANCELLED')
return ok(id)
