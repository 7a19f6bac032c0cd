-- No backend could take queued task ARGV[3]: put it back without counting an attempt.
-- ARGV: 2 entry id, 3 task id, 4 not-before ms. Returns 1 if deferred, 0 if not queued.
local t = task_key(ARGV[3])
release(ARGV[2])
if redis.call('HGET', t, 'status') ~= 'queued' then
  return 0
end
redis.call('HSET', t, 'next_attempt_ms', ARGV[4])
redis.call('ZADD', P .. 'delayed', ARGV[4], ARGV[3])
return 1
