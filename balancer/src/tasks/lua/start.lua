-- A worker took stream entry ARGV[2] for task ARGV[3]: start an attempt.
-- ARGV: 2 entry id, 3 task id, 4 consumer, 5 now ms, 6 result TTL ms.
-- Returns {'run', attempt, max_attempts, {method, path, headers, body, timeout_ms}},
-- {'gone'} (no such task), {'skip', status} (cancelled or finished meanwhile), or
-- {'dead', callback} (a lapsed lease used up the last attempt).
local entry, id, now = ARGV[2], ARGV[3], ARGV[5]
local t = task_key(id)
local st = redis.call('HGET', t, 'status')
if not st then
  return {'gone'}
end
if st ~= 'queued' and st ~= 'running' then
  release(entry)
  return {'skip', st}
end
local max = tonumber(redis.call('HGET', t, 'max_attempts')) or 1
if st == 'running' then
  -- Claimed after its lease lapsed: the previous attempt's balancer stopped renewing it.
  if lapsed(t, id, entry, now, ARGV[6]) then
    return {'dead', redis.call('HGET', t, 'callback') or ''}
  end
else
  move(id, 'queued', 'running')
end
local attempt = redis.call('HINCRBY', t, 'attempts', 1)
redis.call('HSETNX', t, 'started_ms', now)
redis.call('HSET', t, 'status', 'running', 'attempt_started_ms', now, 'worker', ARGV[4])
redis.call('HDEL', t, 'next_attempt_ms')
return {'run', attempt, max, redis.call('HMGET', t, 'method', 'path', 'headers', 'body', 'timeout_ms')}
