-- ARGV: P, now, then what lease_tasks reads from ARGV[3].
return finish(lease_tasks(3))
