-- One ack and, when it is applied, the caller's next lease, in one call.
-- ARGV: P, now, the ack's 8 arguments (see ack_all), then what lease_tasks
-- reads. Answers {the ack's outcome, {the leased tasks' fields}}.
local acked = ack_all(3, 10)[1]
local leased = {}
if acked[1] == 'ok' or acked[1] == 'brief' then leased = lease_tasks(11) end
return finish({acked, leased})
