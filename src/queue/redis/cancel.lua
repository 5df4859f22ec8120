-- ARGV: P, now, task id.
local id = ARGV[3]
local t = fetch(id)
local status = t[F.status]
if not status then return {'notfound'} end
if status == 'PENDING' then
  local seq = tonumber(redis.call('HGET', tkey(id), 'seq'))
  unfile_pending(id, t[F.queue], tonumber(t[F.priority]), tonumber(t[F.run_at]), seq)
elseif status == 'IN_PROGRESS' then
  redis.call('ZREM', P .. 'leases', id)
else
  return {'precondition', 'task ' .. id .. ' is ' .. status .. '; only PENDING and IN_PROGRESS tasks can be cancelled'}
end
update(t, 'status', 'CANCELLED', 'lease_id', '', 'lease_expires_at', 0, 'updated_at', NOW)
move(t[F.queue], status, 'CANCELLED')
file_final(id, 'CANCELLED')
return finish(ok(t))
