-- wrk script: send DEPTH requests per write (HTTP/1.1 pipelining).
-- usage: wrk -s bench/pipeline.lua URL -- DEPTH
-- wrk counts every response of the batch; used by bench/run only to
-- cross-check bench/loadgen at rates both can reach.

init = function(args)
   local depth = tonumber(args[1]) or 16
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format(nil, wrk.path)
   end
   batch = table.concat(r)
end

request = function()
   return batch
end
