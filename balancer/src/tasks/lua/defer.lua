-- No backend could take task ARGV[3] (entry ARGV[2]): put it back without counting an
-- attempt. An entry taken over from a lapsed lease (task still `running`) goes back to the
-- queue too, its lost attempt counted (or the task is dead if that was the last one).
-- ARGV: 2 entry id, 3 task id, 4 not-before ms, 5 now ms, 6 result TTL ms.
-- Returns {'queued'}, {'done', callback} (now dead) or {'skip', status}.
local entry, id = ARGV[2], ARGV[3]
local t = task_key(id)
local st = redis.call('HGET', t, 'status')
if st == 'running' then
  if lapsed(t, id, entry, ARGV[5], ARGV[6]) then
    return {'done', redis.call('HGET', t, 'callback') or ''}
  end
  requeue(t, id, ARGV[4], entry)
  return {'queued'}
end
release(entry)
if st ~= 'queued' then
  return {'skip', st or 'gone'}
end
redis.call('HSET', t, 'next_attempt_ms', ARGV[4])
redis.call('ZADD', P .. 'delayed', ARGV[4], id)
return {'queued'}
