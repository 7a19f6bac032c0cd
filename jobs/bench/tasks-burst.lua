-- wrk script for jobs/bench-tasks.sh, phase C: submit BURST tasks (GET / with
-- `Prefer: respond-async`) as fast as the connections allow, then stop sending
-- and create the file BURST_MARKER so the script can end wrk (SIGINT) at once:
-- wrk itself would otherwise idle until its -d duration is over. Use -t1 (the
-- count is per thread). Requests in flight when the limit is reached are still
-- answered and stored by the balancer: the script counts tasks in Redis.
local limit = tonumber(os.getenv("BURST") or "20000")
local marker = os.getenv("BURST_MARKER")
local n = 0

wrk.headers["Prefer"] = "respond-async"

function response(status, headers, body)
    n = n + 1
    if n == limit then
        if marker then
            local f = io.open(marker, "w")
            if f then f:write(n, "\n"); f:close() end
        end
        wrk.thread:stop()
    end
end
