-- Enqueue, then lease for a worker that waits: a new task handed straight
-- to a waiting worker in the call that stores it.
-- ARGV: P, now, the number of tasks n, 10 arguments per task (see
-- enqueue_tasks), then what lease_tasks reads.
-- Answers {the enqueue answers, {the leased tasks, packed}}.
local n = tonumber(ARGV[3])
local a = 4 + 10 * n

-- Whether the lease at ARGV[a..] would take the one new task at ARGV[4..]
-- and nothing else: the task is due, has no idempotency key, its queue is
-- one the worker asked for and not paused, and none of the worker's queues
-- has another task ready.
local function takes_only_the_new_task()
  if n ~= 1 or ARGV[13] ~= '' or tonumber(ARGV[12]) > NOW then return false end
  local queue = ARGV[5]
  local wanted = tonumber(ARGV[a + 3]) == 0
  for _, q in ipairs(asked_queues(a)) do
    if q == queue then wanted = true end
    if redis.call('EXISTS', P .. 'ready:' .. q) == 1 then return false end
  end
  return wanted and redis.call('SISMEMBER', P .. 'paused', queue) == 0
end

-- The new task stored as leased: what enqueue_tasks then lease_tasks would
-- leave, without filing it as pending first. A third of the work of the
-- two, on the path every task takes while workers keep up.
local function store_leased()
  local id, queue = ARGV[4], ARGV[5]
  local worker, expires = ARGV[a], NOW + tonumber(ARGV[a + 1])
  local lease = ARGV[a + 4 + tonumber(ARGV[a + 3])]
  local seq = redis.call('INCR', P .. 'seq')
  local t = {id, ARGV[6], ARGV[7], ARGV[8], 'IN_PROGRESS', ARGV[2], ARGV[2], '', worker, queue, ARGV[9], '1',
    ARGV[10], ARGV[12], '', '', string.format('%d', expires), lease, ARGV[11]}
  local fields = {}
  for i, name in ipairs(FIELDS) do
    fields[2 * i - 1] = name
    fields[2 * i] = t[i]
  end
  redis.call('HSET', tkey(id), 'seq', seq, unpack(fields))
  redis.call('SADD', P .. 'queues', queue)
  redis.call('ZADD', P .. 'all', seq, id)
  redis.call('ZADD', P .. 'leases', expires, id)
  count(queue, 'IN_PROGRESS', 1)
  return {{{'new'}}, {pack(t)}}
end

reap(1000)
promote(1000)
if takes_only_the_new_task() then return finish(store_leased()) end
local stored = enqueue_tasks(4, a - 1)
return finish({stored, lease_tasks(a)})
