-- ARGV: P, now, then 7 per ack (see ack_all).
return finish(ack_all(3, #ARGV))
