-- ARGV: P, now, most tasks to return. Answers how many leases had expired.
return finish(reap(tonumber(ARGV[3])))
