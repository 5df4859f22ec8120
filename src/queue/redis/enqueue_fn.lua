-- enqueue_tasks(from, to): store the tasks in ARGV[from..to], 10 arguments
-- each: id, queue, type, payload, metadata, priority, max_attempts,
-- retry_backoff_ms, run_at, idempotency_key.
-- Answers, per task, {'new'} (stored as given) or {'existing', fields}.
local function enqueue_tasks(from, to)
  local out = {}
  local queues = {}
  for i = from, to, 10 do
    local id, queue, idem = ARGV[i], ARGV[i + 1], ARGV[i + 9]
    local existing = idem ~= '' and redis.call('GET', P .. 'idem:' .. idem)
    if existing then
      out[#out + 1] = {'existing', fetch(existing)}
    else
      local priority, run_at = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 8])
      local seq = redis.call('INCR', P .. 'seq')
      local seq_arg = int(seq)
      redis.call('HSET', tkey(id), 'id', id, 'queue', queue, 'type', ARGV[i + 2], 'payload', ARGV[i + 3],
        'metadata', ARGV[i + 4], 'status', 'PENDING', 'priority', ARGV[i + 5], 'attempts', '0',
        'max_attempts', ARGV[i + 6], 'retry_backoff_ms', ARGV[i + 7], 'run_at', ARGV[i + 8], 'created_at', ARGV[2],
        'updated_at', ARGV[2], 'result', '', 'worker_id', '', 'idempotency_key', idem, 'last_error', '',
        'lease_expires_at', '0', 'lease_id', '', 'seq', seq_arg)
      if idem ~= '' then redis.call('SET', P .. 'idem:' .. idem, id) end
      if not queues[queue] then
        redis.call('SADD', P .. 'queues', queue)
        queues[queue] = true
      end
      redis.call('ZADD', P .. 'all', seq_arg, id)
      count(queue, 'PENDING', 1)
      file_pending(id, queue, priority, run_at, seq)
      out[#out + 1] = {'new'}
    end
  end
  return out
end
