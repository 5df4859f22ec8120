-- The queues the lease at ARGV[a..] asks for: those it names, or every one.
local function asked_queues(a)
  local nq = tonumber(ARGV[a + 3])
  if nq == 0 then return redis.call('SMEMBERS', P .. 'queues') end
  local asked = {}
  for i = 1, nq do asked[i] = ARGV[a + 3 + i] end
  return asked
end

-- lease_tasks(a): lease due tasks as ARGV[a..] asks: worker_id, lease_ms,
-- max_tasks, number of queues, the queues (none: every queue), then
-- max_tasks fresh lease ids, the most bytes of tasks to answer (0: no limit)
-- and what a task weighs beyond its fields.
-- Answers the leased tasks' fields (as fetch reads them). Tasks are sized
-- before they are taken, so nothing is leased that the answer cannot carry.
local function lease_tasks(a)
  local worker, lease_ms, max = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local nq = tonumber(ARGV[a + 3])
  local max_bytes = tonumber(ARGV[a + 3 + nq + max + 1])
  local overhead = tonumber(ARGV[a + 3 + nq + max + 2])
  local used = 0
  -- Tasks read by fits(), by ready member, so each is read once.
  local fetched = {}

  -- Whether the task behind ready member m still fits the answer (the first always does).
  local function fits(m)
    local t = fetch(string.sub(m, RANK_LEN + 1))
    fetched[m] = t
    local size = overhead
    for _, f in ipairs({'payload', 'metadata', 'result', 'last_error'}) do
      size = size + string.len(t[F[f]] or '')
    end
    if used > 0 and max_bytes > 0 and used + size > max_bytes then return false end
    used = used + size
    return true
  end
  reap(1000)
  promote(1000)

  local asked = asked_queues(a)
  -- A paused queue hands out nothing.
  local queues = {}
  for _, q in ipairs(asked) do
    if redis.call('SISMEMBER', P .. 'paused', q) == 0 then queues[#queues + 1] = q end
  end
  if #queues == 0 then return {} end

  -- The next ready members, in order, with the queue each came from.
  local picked = {}
  if #queues == 1 then
    local key = P .. 'ready:' .. queues[1]
    local taken = {}
    for _, m in ipairs(redis.call('ZRANGE', key, '0', int(max - 1))) do
      if not fits(m) then break end
      taken[#taken + 1] = m
      picked[#picked + 1] = {m, queues[1]}
    end
    if #taken > 0 then redis.call('ZREM', key, unpack(taken)) end
  else
    -- The head of each ready set; only the set a task came from is read again.
    local heads = {}
    for _, q in ipairs(queues) do heads[q] = redis.call('ZRANGE', P .. 'ready:' .. q, '0', '0')[1] or false end
    for _ = 1, max do
      local best, from = false, nil
      for q, head in pairs(heads) do
        if head and (not best or head < best) then best, from = head, q end
      end
      if not best or not fits(best) then break end
      redis.call('ZREM', P .. 'ready:' .. from, best)
      heads[from] = redis.call('ZRANGE', P .. 'ready:' .. from, '0', '0')[1] or false
      picked[#picked + 1] = {best, from}
    end
  end

  local out = {}
  local leases = a + 3 + nq
  for n, p in ipairs(picked) do
    local id = string.sub(p[1], RANK_LEN + 1)
    local t = fetched[p[1]] or fetch(id)
    local expires = int(NOW + lease_ms)
    update(t, 'status', 'IN_PROGRESS', 'worker_id', worker, 'lease_id', ARGV[leases + n],
      'lease_expires_at', expires, 'attempts', tonumber(t[F.attempts]) + 1, 'updated_at', NOW_ARG)
    redis.call('ZADD', P .. 'leases', expires, id)
    redis.call('ZREM', P .. 'pending', id)
    move(p[2], 'PENDING', 'IN_PROGRESS')
    out[#out + 1] = t
  end
  return out
end
