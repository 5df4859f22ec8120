-- ARGV: P, now, worker_id, lease_ms, max_tasks, number of queues, the
-- queues (none: every queue), then max_tasks fresh lease ids.
-- Answers the leased tasks, each as its fields.
local worker, lease_ms, max = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local nq = tonumber(ARGV[6])
reap(1000)
promote(1000)

local queues = {}
if nq == 0 then
  queues = redis.call('SMEMBERS', P .. 'queues')
else
  for i = 1, nq do queues[i] = ARGV[6 + i] end
end

-- The next ready members, in order, with the queue each came from.
local picked = {}
if #queues == 1 then
  local popped = redis.call('ZPOPMIN', P .. 'ready:' .. queues[1], max)
  for i = 1, #popped, 2 do picked[#picked + 1] = {popped[i], queues[1]} end
else
  -- The head of each ready set; only the set a task came from is read again.
  local heads = {}
  for _, q in ipairs(queues) do heads[q] = redis.call('ZRANGE', P .. 'ready:' .. q, 0, 0)[1] or false end
  for _ = 1, max do
    local best, from = false, nil
    for q, head in pairs(heads) do
      if head and (not best or head < best) then best, from = head, q end
    end
    if not best then break end
    redis.call('ZREM', P .. 'ready:' .. from, best)
    heads[from] = redis.call('ZRANGE', P .. 'ready:' .. from, 0, 0)[1] or false
    picked[#picked + 1] = {best, from}
  end
end

local out = {}
local leases = 6 + nq
for n, p in ipairs(picked) do
  local id = string.sub(p[1], RANK_LEN + 1)
  local t = fetch(id)
  local expires = NOW + lease_ms
  update(t, 'status', 'IN_PROGRESS', 'worker_id', worker, 'lease_id', ARGV[leases + n],
    'lease_expires_at', expires, 'attempts', tonumber(t[F.attempts]) + 1, 'updated_at', NOW)
  redis.call('ZADD', P .. 'leases', expires, id)
  redis.call('ZREM', P .. 'pending', id)
  move(p[2], 'PENDING', 'IN_PROGRESS')
  out[#out + 1] = t
end
return finish(out)
