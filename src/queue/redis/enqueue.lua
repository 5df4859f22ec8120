-- ARGV: P, now, then 10 per task (see enqueue_tasks).
return finish(enqueue_tasks(3, #ARGV))
