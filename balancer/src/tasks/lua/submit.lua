-- Stores a new task and queues it, unless its Idempotency-Key names an earlier one.
-- ARGV: 2 id, 3 idempotency key ('' = none), 4 fingerprint, 5 key TTL ms, 6 now ms,
--       7 not-before ms, 8.. field/value pairs of the task hash.
-- Returns {'created', id} or {'exists', '<id> <fingerprint>'}.
local id = ARGV[2]
if ARGV[3] ~= '' then
  local k = P .. 'idem:' .. ARGV[3]
  local prev = redis.call('GET', k)
  if prev then
    return {'exists', prev}
  end
  redis.call('SET', k, id .. ' ' .. ARGV[4], 'PX', ARGV[5])
end
redis.call('HSET', task_key(id), 'status', 'queued', unpack(ARGV, 8))
redis.call('ZADD', P .. 'idx:all', 0, id)
move(id, nil, 'queued')
if tonumber(ARGV[7]) > tonumber(ARGV[6]) then
  redis.call('ZADD', P .. 'delayed', ARGV[7], id)
else
  redis.call('XADD', STREAM, '*', 'task', id)
end
return {'created', id}
