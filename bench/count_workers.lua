-- Counts responses per x-clusterd-worker header value and prints each worker's share.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init()
  counts = {}
end

function response(status, headers, body)
  local w = headers["x-clusterd-worker"] or "none"
  counts[w] = (counts[w] or 0) + 1
end

function done(summary, latency, requests)
  local total, all = 0, {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for w, n in pairs(c) do
      all[w] = (all[w] or 0) + n
      total = total + n
    end
  end
  for w, n in pairs(all) do
    io.write(string.format("worker %s: %d responses (%.1f%%)\n", w, n, 100 * n / total))
  end
end
