-- ARGV: P, now, task id.
local id = ARGV[3]
local t = redis.call('HMGET', tkey(id), 'status', 'queue', 'priority', 'seq')
if not t[1] then return {'notfound'} end
if t[1] ~= 'FAILED' and t[1] ~= 'CANCELLED' then
  return {'precondition', 'task ' .. id .. ' is ' .. t[1] .. '; only FAILED and CANCELLED tasks can be retried'}
end
redis.call('HSET', tkey(id), 'status', 'PENDING', 'attempts', 0, 'run_at', NOW, 'worker_id', '', 'lease_id', '',
  'lease_expires_at', 0, 'updated_at', NOW)
move(t[2], t[1], 'PENDING')
file_pending(id, t[2], tonumber(t[3]), NOW, tonumber(t[4]))
return ok(id)
