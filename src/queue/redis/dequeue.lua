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
local leases = 7 + nq

-- The head of each ready set; only the set a task came from is read again.
local heads = {}
for _, q in ipairs(queues) do heads[q] = redis.call('ZRANGE', P .. 'ready:' .. q, 0, 0)[1] or false end

local out = {}
for n = 1, max do
  local best, from = false, nil
  for q, head in pairs(heads) do
    if head and (not best or head < best) then best, from = head, q end
  end
  if not best then break end
  redis.call('ZREM', P .. 'ready:' .. from, best)
  heads[from] = redis.call('ZRANGE', P .. 'ready:' .. from, 0, 0)[1] or false

  local id = string.sub(best, RANK_LEN + 1)
  local expires = NOW + lease_ms
  redis.call('HINCRBY', tkey(id), 'attempts', 1)
  redis.call('HSET', tkey(id), 'status', 'IN_PROGRESS', 'worker_id', worker, 'lease_id', ARGV[leases + n - 1],
    'lease_expires_at', expires, 'updated_at', NOW)
  redis.call('ZADD', P .. 'leases', expires, id)
  redis.call('ZREM', P .. 'pending', id)
  move(from, 'PENDING', 'IN_PROGRESS')
  out[#out + 1] = fetch(id)
end
return out
