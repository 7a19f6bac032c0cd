-- Queues a dead or failed task ARGV[2] again with a fresh set of attempts.
-- Returns {'queued'}, {'conflict', status} or {'missing'}.
local id = ARGV[2]
local t = task_key(id)
local st = redis.call('HGET', t, 'status')
if not st then
  return {'missing'}
end
if st ~= 'dead' and st ~= 'failed' then
  return {'conflict', st}
end
redis.call('PERSIST', t)
redis.call('HDEL', t, 'finished_ms', 'started_ms', 'next_attempt_ms', 'r_status', 'r_headers',
  'r_body', 'r_truncated', 'r_size')
redis.call('HSET', t, 'status', 'queued', 'attempts', 0)
redis.call('HINCRBY', t, 'requeued', 1)
move(id, st, 'queued')
redis.call('XADD', STREAM, '*', 'task', id)
return {'queued'}
