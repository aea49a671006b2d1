-- wrk script: single-message POSTs; TOKEN from the environment, TOPICS topics round-robin.
-- Requests are built in init(), after wrk has set the Host header from the URL.
local requests = {}
local n = 0

function init(args)
  local topics = tonumber(os.getenv("TOPICS") or "1")
  local token = os.getenv("TOKEN") or ""
  for i = 1, topics do
    requests[i] = wrk.format("POST", "/api/v1/messages", {
      ["Host"] = wrk.headers["Host"],
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
    }, '{"topic":"bench-' .. i .. '","payload":{"n":12345,"text":"hello relay"}}')
  end
end

function request()
  n = n + 1
  return requests[(n % #requests) + 1]
end
