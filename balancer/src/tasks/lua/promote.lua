-- Moves up to ARGV[3] delayed tasks that are due (not-before <= ARGV[2]) onto the stream.
-- Atomic, so balancers running it side by side never queue a task twice.
local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do
  redis.call('ZREM', P .. 'delayed', id)
  redis.call('XADD', STREAM, '*', 'task', id)
end
return #due
