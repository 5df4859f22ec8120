-- Apply a waiting worker's acks, enqueue, then lease for that worker: a new
-- task handed straight to a waiting worker in the call that stores it,
-- with the acks the worker sent while it waited.
-- ARGV: P, now, the number of acks m, 8 arguments per ack (see ack_all),
-- the number of tasks n, 10 arguments per task (see enqueue_tasks), then
-- what lease_tasks reads.
-- Answers {the acks' outcomes, the enqueue answers, {the leased tasks'
-- fields}}, or {outcomes, {{'new'}}, 1} when the one new task was leased
-- with the first lease id given.
local m = tonumber(ARGV[3])
local b = 5 + 8 * m
local n = tonumber(ARGV[b - 1])
local a = b + 10 * n

-- Whether the lease at ARGV[a..] would take the one new task at ARGV[b..]
-- and nothing else: the task is due, has no idempotency key, its queue is
-- one the worker asked for and not paused, and none of the worker's queues
-- has another task ready.
local function takes_only_the_new_task()
  if n ~= 1 or ARGV[b + 9] ~= '' or tonumber(ARGV[b + 8]) > NOW then return false end
  local queue = ARGV[b + 1]
  local wanted = tonumber(ARGV[a + 3]) == 0
  for _, q in ipairs(asked_queues(a)) do
    if q == queue then wanted = true end
    if redis.call('EXISTS', P .. 'ready:' .. q) == 1 then return false end
  end
  return wanted and redis.call('SISMEMBER', P .. 'paused', queue) == 0
end

-- The new task stored as leased: what enqueue_tasks then lease_tasks would
-- leave, without filing it as pending first. A third of the work of the
-- two, on the path every task takes while workers keep up. Answers 1 for
-- the leased tasks: the caller knows the task it sent and the lease it
-- asked for, and sending them back cost Redis about 8 µs a task.
local function store_leased()
  local id, queue = ARGV[b], ARGV[b + 1]
  local worker, expires = ARGV[a], int(NOW + tonumber(ARGV[a + 1]))
  local lease = ARGV[a + 4 + tonumber(ARGV[a + 3])]
  local seq = int(redis.call('INCR', P .. 'seq'))
  redis.call('HSET', tkey(id), 'seq', seq, 'id', id, 'type', ARGV[b + 2], 'payload', ARGV[b + 3], 'metadata', ARGV[b + 4],
    'status', 'IN_PROGRESS', 'created_at', NOW_ARG, 'updated_at', NOW_ARG, 'result', '', 'worker_id', worker,
    'queue', queue, 'priority', ARGV[b + 5], 'attempts', '1', 'max_attempts', ARGV[b + 6], 'run_at', ARGV[b + 8],
    'idempotency_key', '', 'last_error', '', 'lease_expires_at', expires, 'lease_id', lease,
    'retry_backoff_ms', ARGV[b + 7])
  redis.call('SADD', P .. 'queues', queue)
  redis.call('ZADD', P .. 'all', seq, id)
  redis.call('ZADD', P .. 'leases', expires, id)
  count(queue, 'IN_PROGRESS', 1)
  return {{'new'}}, 1
end

local acked = ack_all(4, b - 2)
reap(1000)
promote(1000)
if takes_only_the_new_task() then
  local stored, leased = store_leased()
  return finish({acked, stored, leased})
end
local stored = enqueue_tasks(b, a - 1)
return finish({acked, stored, lease_tasks(a)})
