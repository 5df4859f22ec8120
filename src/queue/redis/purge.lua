-- ARGV: P, now, before, queue ('' for every queue), after (a seq), most to look at.
-- Looks at the next tasks in enqueue order after seq `after` and deletes the
-- finished ones (COMPLETED, FAILED, CANCELLED) last changed before `before`,
-- with their idempotency keys. Answers {deleted, last seq looked at, looked at}.
local before, only, after, limit = tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
local rows = redis.call('ZRANGEBYSCORE', P .. 'all', '(' .. after, '+inf', 'WITHSCORES', 'LIMIT', 0, limit)
local deleted, last = 0, tonumber(after)
for i = 1, #rows, 2 do
  local id = rows[i]
  last = tonumber(rows[i + 1])
  local t = redis.call('HMGET', tkey(id), 'status', 'queue', 'updated_at', 'idempotency_key')
  local status, queue, updated, idem = t[1], t[2], tonumber(t[3]), t[4]
  if (status == 'COMPLETED' or status == 'FAILED' or status == 'CANCELLED')
      and updated and updated < before and (only == '' or queue == only) then
    redis.call('DEL', tkey(id))
    redis.call('ZREM', P .. 'all', id)
    -- Both: one indexed once by a list may be in a set its status left.
    unfile_final(id, 'FAILED')
    unfile_final(id, 'CANCELLED')
    if idem and idem ~= '' and redis.call('GET', P .. 'idem:' .. idem) == id then
      redis.call('DEL', P .. 'idem:' .. idem)
    end
    count(queue, status, -1)
    deleted = deleted + 1
  end
end
return finish({deleted, last, #rows / 2})
