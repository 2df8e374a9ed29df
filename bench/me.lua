-- GET /me (or $WRK_PATH) with one of the sessions listed in the file named by $COOKIES (one
-- "name=value" per line), rotating through them: every request is authenticated, the sessions
-- are many. The same script for /healthz sends the same headers, so the two compare fairly.
local path = os.getenv("WRK_PATH") or "/me"
local cookies = {}
for line in io.lines(os.getenv("COOKIES")) do
  if #line > 0 then cookies[#cookies + 1] = line end
end
local i = math.random(#cookies)

function request()
  i = i % #cookies + 1
  return wrk.format("GET", path, { Cookie = cookies[i] })
end
