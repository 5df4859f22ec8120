-- ARGV: P, now, then 8 per ack (see ack_all).
return finish(ack_all(3, #ARGV))
