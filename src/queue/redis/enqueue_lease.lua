-- Enqueue, then lease for a worker that waits: a new task handed straight
-- to a waiting worker in the call that stores it.
-- ARGV: P, now, the number of tasks n, 10 arguments per task (see
-- enqueue_tasks), then what lease_tasks reads.
-- Answers {the enqueue answers, {the leased tasks, packed}}.
local n = tonumber(ARGV[3])
local stored = enqueue_tasks(4, 3 + 10 * n)
return finish({stored, lease_tasks(4 + 10 * n)})
