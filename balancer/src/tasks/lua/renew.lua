-- Renews the lease on stream entry ARGV[2] if consumer ARGV[3] still holds it (resets its
-- idle time so XAUTOCLAIM leaves it alone). Returns 1 if renewed, 0 if the lease was lost.
local pending = redis.call('XPENDING', STREAM, GROUP, ARGV[2], ARGV[2], 1, ARGV[3])
if #pending == 0 then
  return 0
end
redis.call('XCLAIM', STREAM, GROUP, ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
