-- ack_all(from, to): apply the acks in ARGV[from..to], 7 arguments each:
-- task id, success ('1'/'0'), result, lease id ('' for none), retry
-- ('1'/'0'), error, jitter fraction for the backoff.
-- Answers, per ack, {'ok', fields}, {'notfound'} or {'precondition', message}.
local function ack_all(from, to)
  local out = {}
  for i = from, to, 7 do
    local id, success, result, lease = ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2], ARGV[i + 3]
    local retry, err, fraction = ARGV[i + 4] == '1', ARGV[i + 5], tonumber(ARGV[i + 6])
    local t = fetch(id)
    local refused = not_held(t, id, lease)
    if lease ~= '' and t[F.lease_id] == lease and t[F.status] == (success and 'COMPLETED' or 'FAILED') then
      -- The same final ack again from the lease that gave it: answer, change nothing.
      out[#out + 1] = ok(t)
    elseif refused then
      out[#out + 1] = refused
    else
      local queue, attempts = t[F.queue], tonumber(t[F.attempts])
      redis.call('ZREM', P .. 'leases', id)
      if success then
        update(t, 'status', 'COMPLETED', 'result', result, 'lease_expires_at', '0', 'updated_at', NOW_ARG)
        move(queue, 'IN_PROGRESS', 'COMPLETED')
      elseif retry and attempts < tonumber(t[F.max_attempts]) then
        local run_at = NOW + backoff(tonumber(t[F.retry_backoff_ms]), attempts, fraction)
        update(t, 'status', 'PENDING', 'result', result, 'last_error', err, 'run_at', run_at, 'worker_id', '',
          'lease_id', '', 'lease_expires_at', '0', 'updated_at', NOW_ARG)
        move(queue, 'IN_PROGRESS', 'PENDING')
        file_pending(id, queue, tonumber(t[F.priority]), run_at, tonumber(redis.call('HGET', tkey(id), 'seq')))
      else
        update(t, 'status', 'FAILED', 'result', result, 'last_error', err, 'lease_expires_at', '0', 'updated_at', NOW_ARG)
        move(queue, 'IN_PROGRESS', 'FAILED')
      end
      out[#out + 1] = ok(t)
    end
  end
  return out
end
