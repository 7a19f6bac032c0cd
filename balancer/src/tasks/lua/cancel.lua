-- Cancels task ARGV[2] if it is still queued (its stream entry, if any, is skipped later).
-- ARGV: 2 task id, 3 now ms, 4 result TTL ms.
-- Returns {'cancelled', callback}, {'conflict', status} or {'missing'}.
local id = ARGV[2]
local t = task_key(id)
local st = redis.call('HGET', t, 'status')
if not st then
  return {'missing'}
end
if st ~= 'queued' then
  return {'conflict', st}
end
redis.call('ZREM', P .. 'delayed', id)
move(id, 'queued', 'cancelled')
finish(t, id, 'cancelled', ARGV[3], ARGV[4])
return {'cancelled', redis.call('HGET', t, 'callback') or ''}
