-- wrk script for tools/bench/ingest.sh: POSTs of one message (BULK unset or 1) or of BULK
-- messages to /api/v1/messages/bulk, over TOPICS topics round-robin, with TOKEN as bearer.
-- Requests are built in init(), after wrk has set the Host header from the URL.
local requests = {}
local n = 0

function init(args)
  local topics = tonumber(os.getenv("TOPICS") or "1")
  local bulk = tonumber(os.getenv("BULK") or "1")
  local token = os.getenv("TOKEN") or ""
  local headers = {
    ["Host"] = wrk.headers["Host"],
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }
  local message = function(i)
    return '{"topic":"bench-' .. i .. '","payload":{"n":12345,"text":"hello relay"}}'
  end
  for i = 1, topics do
    if bulk <= 1 then
      requests[i] = wrk.format("POST", "/api/v1/messages", headers, message(i))
    else
      local items = {}
      for j = 1, bulk do items[j] = message(((i + j) % topics) + 1) end
      requests[i] = wrk.format("POST", "/api/v1/messages/bulk", headers,
        '{"messages":[' .. table.concat(items, ",") .. ']}')
    end
  end
end

function request()
  n = n + 1
  return requests[(n % #requests) + 1]
end
