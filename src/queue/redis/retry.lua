-- ARGV: P, now, task id.
local id = ARGV[3]
local t = fetch(id)
local status = t[F.status]
if not status then return {'notfound'} end
if status ~= 'FAILED' and status ~= 'CANCELLED' then
  return {'precondition', 'task ' .. id .. ' is ' .. status .. '; only FAILED and CANCELLED tasks can be retried'}
end
update(t, 'status', 'PENDING', 'attempts', 0, 'run_at', NOW, 'worker_id', '', 'lease_id', '',
  'lease_expires_at', 0, 'updated_at', NOW)
move(t[F.queue], status, 'PENDING')
unfile_final(id, status)
file_pending(id, t[F.queue], tonumber(t[F.priority]), NOW, tonumber(redis.call('HGET', tkey(id), 'seq')))
return finish(ok(t))
