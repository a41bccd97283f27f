-- Exercises the interpreter built by the benchmark; bench.py holds the expected output.
local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
print("fib", fib(20))
local t = {}
for i = 1, 10 do t[i] = (i * 7) % 11 end
table.sort(t)
print("sorted", table.concat(t, ","))
local s = ("hello world"):gsub("o", "0")
print("gsub", s)
print("format", string.format("%5.2f|%x|%s", math.pi, 255, "x"))
local co = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i * i) end end)
print("coroutine", co(), co(), co())
print("arith", 7 // 2, 7 % 3, 2 ^ 10, math.type(1), math.type(1.0))
print("utf8", #utf8.char(72, 228, 8364))
local words = {}
for w in ("the quick brown fox"):gmatch("%a+") do words[#words + 1] = w:upper() end
print("gmatch", table.concat(words, " "))
local ok, err = pcall(error, { code = 42 })
print("pcall", ok, err.code)
local mt = setmetatable({}, { __index = function(_, k) return k * 2 end })
print("meta", mt[21])
local acc = 0
for i = 1, 100000 do acc = acc + (i % 7) end
print("loop", acc)
local keys = {}
local h = {}
for i = 1, 1000 do h["k" .. i] = i end
local sum = 0
for k, v in pairs(h) do sum = sum + v end
print("table", sum, h.k500)
print("rep", ("ab"):rep(3, "-"))
