-- Shared by every routine (routines.rs puts it in front of them all).
--
-- Keys, under the prefix P (ARGV[1]):
--   P..'t:'..id        hash: one task, the fields of FIELDS plus 'seq'
--   P..'seq'           counter: enqueue order
--   P..'all'           zset id -> seq: every task, for listing oldest first
--   P..'queues'        set: every queue name ever used
--   P..'paused'        set: queues paused by an operator (dequeue skips them)
--   P..'ready:'..q     zset, all scores 0: due pending tasks of queue q, as
--                      rank(priority, run_at, seq)..id, so the first member
--                      is the next to hand out
--   P..'delayed'       zset id -> run_at: pending tasks not yet due
--   P..'pending'       zset id -> run_at: every pending task (oldest age)
--   P..'leases'        zset id -> lease_expires_at: tasks IN_PROGRESS
--   P..'idem:'..key    string: the task an idempotency key created
--   P..'counts'        hash queue..'\t'..status -> count
--   P..'failed'        zset id -> seq: tasks FAILED, for listing them
--   P..'cancelled'     zset id -> seq: tasks CANCELLED, for listing them
--                      (a list that finds one holding fewer tasks than the
--                      counts, as one an older nova wrote, files them first)
--
-- Set by begin() at the start of every call (a function of the library is
-- called many times per load): the call's arguments, the prefix P and the
-- time NOW they start with (NOW_ARG: as the caller wrote it), and the count
-- changes finish() writes.
local ARGV, P, NOW, NOW_ARG, deltas
local function begin(args)
  ARGV, P, NOW, NOW_ARG, deltas = args, args[1], tonumber(args[2]), args[2], {}
end

-- A number as redis.call's argument. Given the number itself, Lua writes
-- it with '%.14g', which goes through glibc's float formatting: `perf`
-- found that among redis-server's busiest functions, and each such
-- argument cost about 0.8 µs of Redis's time.
local function int(n) return string.format('%d', n) end

local FIELDS = {'id', 'type', 'payload', 'metadata', 'status', 'created_at', 'updated_at', 'result',
  'worker_id', 'queue', 'priority', 'attempts', 'max_attempts', 'run_at', 'idempotency_key',
  'last_error', 'lease_expires_at', 'lease_id', 'retry_backoff_ms'}

-- Index of each field in FIELDS, for tasks read with fetch().
local F = {}
for i = 1, #FIELDS do F[FIELDS[i]] = i end

local function tkey(id) return P .. 't:' .. id end

-- The task's fields in FIELDS order; t[F.id] is false when there is no such task.
local function fetch(id) return redis.call('HMGET', tkey(id), unpack(FIELDS)) end

-- Set fields of task t (as read by fetch) in Redis and in t: update(t, 'status', 'PENDING', ...).
local function update(t, ...)
  local args = {...}
  for i = 2, #args, 2 do
    if type(args[i]) == 'number' then args[i] = int(args[i]) end
    t[F[args[i - 1]]] = args[i]
  end
  redis.call('HSET', tkey(t[F.id]), unpack(args))
end

-- Highest priority first, then earliest due, then oldest: 36 hex digits that
-- sort as strings in that order.
local function rank(priority, run_at, seq)
  return string.format('%08x%012x%016x', 2147483647 - priority, run_at, seq)
end
local RANK_LEN = 36

-- Count changes are summed in deltas and written once, by finish().
local function count(queue, status, by)
  local k = queue .. '\t' .. status
  deltas[k] = (deltas[k] or 0) + by
end

-- The set that lists tasks of a final status other than COMPLETED (most
-- tasks, found first when walking every task): FAILED and CANCELLED ones.
local FINALS = {FAILED = 'failed', CANCELLED = 'cancelled'}

-- Task id has just become `status`: list it under that status if it has a set.
local function file_final(id, status)
  if FINALS[status] then
    redis.call('ZADD', P .. FINALS[status], redis.call('HGET', tkey(id), 'seq'), id)
  end
end

-- Task id is no longer `status` (retried, or deleted).
local function unfile_final(id, status)
  if FINALS[status] then redis.call('ZREM', P .. FINALS[status], id) end
end

local function move(queue, from, to)
  count(queue, from, -1)
  count(queue, to, 1)
end

-- Every script returns through this, so the counts are written.
local function finish(reply)
  for k, by in pairs(deltas) do
    if by ~= 0 then redis.call('HINCRBY', P .. 'counts', k, int(by)) end
  end
  return reply
end

-- File a task that has just become PENDING where dequeue will find it.
local function file_pending(id, queue, priority, run_at, seq)
  local score = int(run_at)
  if run_at <= NOW then
    redis.call('ZADD', P .. 'ready:' .. queue, '0', rank(priority, run_at, seq) .. id)
  else
    redis.call('ZADD', P .. 'delayed', score, id)
  end
  redis.call('ZADD', P .. 'pending', score, id)
end

local function unfile_pending(id, queue, priority, run_at, seq)
  redis.call('ZREM', P .. 'ready:' .. queue, rank(priority, run_at, seq) .. id)
  redis.call('ZREM', P .. 'delayed', id)
  redis.call('ZREM', P .. 'pending', id)
end

-- The same rule as model::backoff_at.
local function backoff(base, attempts, fraction)
  if base == 0 then base = 1000 end
  local exp = math.min(math.max(attempts - 1, 0), 32)
  local full = math.min(base * 2 ^ exp, 3600000)
  local low = math.floor(full / 2)
  return math.min(low + math.floor((full - low + 1) * fraction), full)
end

-- nil when the caller may act on task t (as read by fetch) as the holder of
-- its lease (lease '' skips the lease check, for clients of the original
-- proto); otherwise the outcome to answer: {'notfound'} or {'precondition', message}.
local function not_held(t, id, lease)
  local status = t[F.status]
  if not status then return {'notfound'} end
  if status ~= 'IN_PROGRESS' then
    return {'precondition', 'task ' .. id .. ' is ' .. status .. ', not IN_PROGRESS'}
  end
  if lease ~= '' and lease ~= t[F.lease_id] then
    return {'precondition', 'lease ' .. lease .. ' does not hold task ' .. id .. ': the lease id is wrong, or the task was handed out again'}
  end
  if tonumber(t[F.lease_expires_at]) <= NOW then
    return {'precondition', 'the lease on task ' .. id .. ' expired; it will be handed out again'}
  end
  return nil
end

-- The outcome {'ok', fields} for task t (as read by fetch, in FIELDS order).
local function ok(t)
  return {'ok', t}
end

-- Return up to `limit` tasks whose lease expired to the queue; how many.
local function reap(limit)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', NOW_ARG, 'LIMIT', '0', int(limit))
  for _, id in ipairs(ids) do
    redis.call('ZREM', P .. 'leases', id)
    local t = redis.call('HMGET', tkey(id), 'status', 'queue', 'priority', 'run_at', 'seq', 'worker_id')
    if t[1] == 'IN_PROGRESS' then
      redis.call('HSET', tkey(id), 'status', 'PENDING', 'last_error', 'lease expired (worker ' .. t[6] .. ')',
        'worker_id', '', 'lease_id', '', 'lease_expires_at', '0', 'updated_at', NOW_ARG)
      move(t[2], 'IN_PROGRESS', 'PENDING')
      file_pending(id, t[2], tonumber(t[3]), tonumber(t[4]), tonumber(t[5]))
    end
  end
  return #ids
end

-- Move up to `limit` delayed tasks that are now due into their ready sets.
local function promote(limit)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW_ARG, 'LIMIT', '0', int(limit))
  for _, id in ipairs(ids) do
    redis.call('ZREM', P .. 'delayed', id)
    local t = redis.call('HMGET', tkey(id), 'queue', 'priority', 'run_at', 'seq')
    redis.call('ZADD', P .. 'ready:' .. t[1], '0', rank(tonumber(t[2]), tonumber(t[3]), tonumber(t[4])) .. id)
  end
end
