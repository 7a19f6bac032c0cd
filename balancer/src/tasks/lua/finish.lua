-- Records the end of attempt ARGV[4] of task ARGV[3], if that attempt is still the task's
-- current one (a worker whose lease lapsed must not overwrite its successor).
-- ARGV: 2 entry id, 3 task id, 4 attempt, 5 now ms, 6 verdict (succeeded | failed | dead |
--       retry | wait: no backend, so not an attempt after all), 7 next attempt ms (retry,
--       wait), 8 result TTL ms, 9 backend, 10 error ('' = none),
--       11.. result field/value pairs (none when the attempt got no response).
-- Returns {'queued'}, {'done', callback} or {'stale', status}.
local id, verdict = ARGV[3], ARGV[6]
local t = task_key(id)
local st = redis.call('HGET', t, 'status')
if st ~= 'running' or redis.call('HGET', t, 'attempts') ~= ARGV[4] then
  -- Not ours any more: leave the stream entry to whoever holds it now.
  return {'stale', st or 'gone'}
end
if verdict == 'wait' then
  redis.call('HINCRBY', t, 'attempts', -1)
  requeue(t, id, ARGV[7], ARGV[2])
  return {'queued'}
end
redis.call('HSET', t, 'backend', ARGV[9])
if ARGV[10] ~= '' then
  redis.call('HSET', t, 'last_error', ARGV[10])
end
if #ARGV > 10 then
  redis.call('HSET', t, unpack(ARGV, 11))
else
  redis.call('HDEL', t, 'r_status', 'r_headers', 'r_body', 'r_truncated', 'r_size')
end
if verdict == 'retry' then
  requeue(t, id, ARGV[7], ARGV[2])
  return {'queued'}
end
move(id, 'running', verdict)
finish(t, id, verdict, ARGV[5], ARGV[8])
release(ARGV[2])
return {'done', redis.call('HGET', t, 'callback') or ''}
