-- The fields an ack reads: a brief ack reads only these, not the payload.
local ACK_FIELDS = {'id', 'status', 'queue', 'priority', 'attempts', 'max_attempts', 'lease_expires_at',
  'lease_id', 'retry_backoff_ms'}

-- Task id's ACK_FIELDS, at their places in FIELDS order (as fetch reads them).
local function fetch_for_ack(id)
  local values = redis.call('HMGET', tkey(id), unpack(ACK_FIELDS))
  local t = {}
  for i = 1, #ACK_FIELDS do t[F[ACK_FIELDS[i]]] = values[i] end
  return t
end

-- ack_all(from, to): apply the acks in ARGV[from..to], 8 arguments each:
-- task id, success ('1'/'0'), result, lease id ('' for none), retry
-- ('1'/'0'), error, jitter fraction for the backoff, brief ('1': answer
-- the task's status, not its fields).
-- Answers, per ack, {'ok', fields} (or {'brief', status}), {'notfound'} or
-- {'precondition', message}.
local function ack_all(from, to)
  local out = {}
  for i = from, to, 8 do
    local id, success, result, lease = ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2], ARGV[i + 3]
    local retry, err, fraction = ARGV[i + 4] == '1', ARGV[i + 5], tonumber(ARGV[i + 6])
    local brief = ARGV[i + 7] == '1'
    local t
    if brief then t = fetch_for_ack(id) else t = fetch(id) end
    local refused = not_held(t, id, lease)
    if lease ~= '' and t[F.lease_id] == lease and t[F.status] == (success and 'COMPLETED' or 'FAILED') then
      -- The same final ack again from the lease that gave it: answer, change nothing.
      out[#out + 1] = brief and {'brief', t[F.status]} or ok(t)
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
        file_final(id, 'FAILED')
      end
      out[#out + 1] = brief and {'brief', t[F.status]} or ok(t)
    end
  end
  return out
end
