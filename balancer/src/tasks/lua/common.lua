-- Shared by every task script (prepended to each). ARGV[1] is always the key prefix
-- (`rustybalancer:{app}:tasks:`); keys are built from it, so these scripts assume one Redis
-- server, not a cluster.
local P = ARGV[1]
local STREAM = P .. 'stream'
local GROUP = 'workers'

local function task_key(id)
  return P .. 'task:' .. id
end

-- Moves `id` between the status indexes (sorted sets, score 0, ids sort by time).
local function move(id, from, to)
  if from then
    redis.call('ZREM', P .. 'idx:' .. from, id)
  end
  redis.call('ZADD', P .. 'idx:' .. to, 0, id)
end

-- Acknowledges and deletes a stream entry ('' = none), keeping the stream short.
local function release(entry)
  if entry ~= '' then
    redis.call('XACK', STREAM, GROUP, entry)
    redis.call('XDEL', STREAM, entry)
  end
end

-- Marks a task finished: final status, time stamp, expiry, and a wake-up for waiters.
local function finish(t, id, status, now, ttl_ms)
  redis.call('HSET', t, 'status', status, 'finished_ms', now)
  redis.call('HDEL', t, 'next_attempt_ms', 'worker')
  redis.call('PEXPIRE', t, ttl_ms)
  redis.call('PUBLISH', P .. 'done', id)
end

-- Puts a running task back in the queue, due at `next_ms`, and releases its stream entry.
local function requeue(t, id, next_ms, entry)
  redis.call('HSET', t, 'status', 'queued', 'next_attempt_ms', next_ms)
  redis.call('HDEL', t, 'worker')
  move(id, 'running', 'queued')
  redis.call('ZADD', P .. 'delayed', next_ms, id)
  release(entry)
end

-- A task found `running` by someone who took over its stream entry: the holder's lease
-- lapsed (balancer gone or stalled), and its attempt counts. Records that and, if it was
-- the last attempt, makes the task dead (returns true).
local function lapsed(t, id, entry, now, ttl_ms)
  local prev = redis.call('HGET', t, 'worker') or '?'
  redis.call('HSET', t, 'last_error', 'lease held by ' .. prev .. ' lapsed (balancer gone or stalled)')
  local max = tonumber(redis.call('HGET', t, 'max_attempts')) or 1
  if (tonumber(redis.call('HGET', t, 'attempts')) or 0) >= max then
    move(id, 'running', 'dead')
    finish(t, id, 'dead', now, ttl_ms)
    release(entry)
    return true
  end
  return false
end

