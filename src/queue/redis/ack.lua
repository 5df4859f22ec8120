-- ARGV: P, now, then 7 per ack: task id, success ('1'/'0'), result, lease id
-- ('' for none), retry ('1'/'0'), error, jitter fraction for the backoff.
-- Answers, per ack, {'ok', fields...}, {'notfound'} or {'precondition', message}.
local out = {}
for i = 3, #ARGV, 7 do
  local id, success, result, lease = ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2], ARGV[i + 3]
  local retry, err, fraction = ARGV[i + 4] == '1', ARGV[i + 5], tonumber(ARGV[i + 6])
  local final = redis.call('HMGET', tkey(id), 'status', 'lease_id')
  local refused = not_held(id, lease)
  if lease ~= '' and final[2] == lease and final[1] == (success and 'COMPLETED' or 'FAILED') then
    -- The same final ack again from the lease that gave it: answer, change nothing.
    out[#out + 1] = ok(id)
  elseif refused then
    out[#out + 1] = refused
  else
    local t = redis.call('HMGET', tkey(id), 'queue', 'priority', 'seq', 'attempts', 'max_attempts', 'retry_backoff_ms')
    local queue, attempts = t[1], tonumber(t[4])
    redis.call('ZREM', P .. 'leases', id)
    if success then
      redis.call('HSET', tkey(id), 'status', 'COMPLETED', 'result', result, 'lease_expires_at', 0, 'updated_at', NOW)
      move(queue, 'IN_PROGRESS', 'COMPLETED')
    elseif retry and attempts < tonumber(t[5]) then
      local run_at = NOW + backoff(tonumber(t[6]), attempts, fraction)
      redis.call('HSET', tkey(id), 'status', 'PENDING', 'result', result, 'last_error', err, 'run_at', run_at,
        'worker_id', '', 'lease_id', '', 'lease_expires_at', 0, 'updated_at', NOW)
      move(queue, 'IN_PROGRESS', 'PENDING')
      file_pending(id, queue, tonumber(t[2]), run_at, tonumber(t[3]))
    else
      redis.call('HSET', tkey(id), 'status', 'FAILED', 'result', result, 'last_error', err, 'lease_expires_at', 0,
        'updated_at', NOW)
      move(queue, 'IN_PROGRESS', 'FAILED')
    end
    out[#out + 1] = ok(id)
  end
end
return out
