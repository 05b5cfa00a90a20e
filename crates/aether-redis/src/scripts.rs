//! The Lua scripts that make multi-step queue operations atomic. Each touches the keys of
//! one queue only (one hash tag), so it runs on a Redis Cluster too. Times come from the
//! server's `TIME`, so the clocks of workers do not matter.

use std::sync::LazyLock;

use fred::clients::Client;
use fred::interfaces::LuaInterface;
use fred::types::{FromValue, Value};

use crate::error::rerouted;

/// A script, run by `EVALSHA` and loaded by `EVAL` when the server does not know it yet
/// (first use, a restart, or a node that just took its slot over).
pub(crate) struct Script {
    lua: &'static str,
    sha: String,
}

impl Script {
    fn new(lua: &'static str) -> Script {
        let sha = fred::types::scripts::Script::from_lua(lua)
            .sha1()
            .to_string();
        Script { lua, sha }
    }

    /// Runs the script; while its slot is moving in a cluster, runs it again after a
    /// pause ([`rerouted`]): a migration is no error to callers.
    pub(crate) async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, fred::error::Error> {
        rerouted(|| self.run_once(client, keys.clone(), args.clone())).await
    }

    async fn run_once<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, fred::error::Error> {
        match client
            .evalsha(self.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(self.lua, keys, args).await
            }
            other => other,
        }
    }
}

macro_rules! script {
    ($name:ident, $doc:literal, $lua:literal) => {
        #[doc = $doc]
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| Script::new($lua));
    };
}

script!(
    STREAM_ENSURE_GROUP,
    "KEYS: stream. ARGV: group. Creates the group if missing: at the start of the stream \
     when it is the first group (so performs sent before any worker are handled), at its \
     end otherwise (a new workgroup does not replay old tasks). 1 if created.",
    r#"
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
local start = '0'
if type(groups) == 'table' and groups.err == nil then
  for _, g in ipairs(groups) do
    for i = 1, #g, 2 do
      if g[i] == 'name' and g[i + 1] == ARGV[1] then return 0 end
    end
  end
  if #groups > 0 then start = '$' end
end
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], start, 'MKSTREAM')
return 1
"#
);

script!(
    STREAM_RECLAIM,
    "KEYS: stream, dead. ARGV: group, consumer, min idle ms, count, cursor, max deliveries, \
     dead max len, topic prefix. Claims entries idle past the lease (XAUTOCLAIM); entries \
     delivered too often go to the dead stream instead. Returns {cursor, {id, redeliveries, \
     fields}...}.",
    r#"
local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[5], 'COUNT', ARGV[4])
local out = {res[1]}
local max = tonumber(ARGV[6])
for _, e in ipairs(res[2]) do
  local id, f = e[1], e[2]
  if type(f) == 'table' then
    local tid, payload, r, g = '?', '', 0, nil
    for i = 1, #f, 2 do
      if f[i] == 't' then tid = f[i + 1]
      elseif f[i] == 'p' then payload = f[i + 1]
      elseif f[i] == 'r' then r = tonumber(f[i + 1]) or 0
      elseif f[i] == 'g' then g = f[i + 1] end
    end
    if g and g ~= ARGV[1] then
      redis.call('XACK', KEYS[1], ARGV[1], id)
    else
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
      local count = 1
      if p[1] then count = p[1][4] end
      local deliveries = r + count
      if deliveries > max then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*',
          'topic', ARGV[8] .. tid .. '/perform', 'payload', payload,
          'reason', 'gave up after ' .. (deliveries - 1) .. ' attempts', 'group', ARGV[1])
        redis.call('XACK', KEYS[1], ARGV[1], id)
      else
        out[#out + 1] = {id, deliveries - 1, f}
      end
    end
  end
end
return out
"#
);

script!(
    STREAM_KEEP_ALIVE,
    "KEYS: stream. ARGV: group, consumer, id. Resets the entry's idle time if this consumer \
     still owns it. 1 if it does.",
    r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] == nil or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"#
);

script!(
    STREAM_REQUEUE,
    "KEYS: stream. ARGV: group, consumer, id, redeliveries. If this consumer still owns the \
     entry: acknowledges it and adds it again, marked for this group only (untrimmed: it \
     replaces the entry). 1 if requeued.",
    r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] == nil or p[1][2] ~= ARGV[2] then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if e[1] == nil then return 0 end
local f = e[1][2]
local tid, payload = nil, nil
for i = 1, #f, 2 do
  if f[i] == 't' then tid = f[i + 1] elseif f[i] == 'p' then payload = f[i + 1] end
end
if tid == nil or payload == nil then return 0 end
redis.call('XADD', KEYS[1], '*', 't', tid, 'p', payload, 'r', ARGV[4], 'g', ARGV[1])
return 1
"#
);

script!(
    STREAM_REJECT,
    "KEYS: stream, dead. ARGV: group, id, dead max len, topic, payload, reason. Stores a dead \
     letter and acknowledges the entry.",
    r#"
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'topic', ARGV[4], 'payload', ARGV[5],
  'reason', ARGV[6], 'group', ARGV[1])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"#
);

script!(
    STREAM_HOUSEKEEPING,
    "KEYS: stream. ARGV: stale ms. Trims the entries every group has acknowledged (XTRIM \
     MINID) and forgets consumers with nothing pending that were not seen for stale ms. \
     Returns the number of entries trimmed.",
    r#"
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) ~= 'table' or groups.err or #groups == 0 then return 0 end
local function field(a, name)
  for i = 1, #a, 2 do if a[i] == name then return a[i + 1] end end
end
local stale = tonumber(ARGV[1])
local min_ms, min_seq, min_text = nil, nil, nil
for _, g in ipairs(groups) do
  local name = field(g, 'name')
  local id
  if field(g, 'pending') > 0 then
    id = redis.call('XPENDING', KEYS[1], name)[2]
  else
    local ms, seq = string.match(field(g, 'last-delivered-id'), '^(%d+)-(%d+)$')
    id = ms .. '-' .. tostring(tonumber(seq) + 1)
  end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  if min_ms == nil or ms < min_ms or (ms == min_ms and seq < min_seq) then
    min_ms, min_seq, min_text = ms, seq, id
  end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], name)) do
    if field(c, 'pending') == 0 and field(c, 'idle') > stale then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], name, field(c, 'name'))
    end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', min_text)
"#
);

script!(
    STREAM_FORGET_CONSUMER,
    "KEYS: stream. ARGV: group, consumer. Deletes the consumer if nothing is pending on it.",
    r#"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if type(p) == 'table' and p.err == nil and #p == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"#
);

script!(
    LIST_ENQUEUE,
    "KEYS: groups, backlog. ARGV: group list prefix, element, max len. Pushes the element \
     to every registered workgroup's list, or to the backlog when there is none; pushes \
     nothing when one of those lists already holds max len elements (nothing is ever \
     trimmed: every element is a perform its workgroup has not consumed). Returns the \
     number of workgroups, or -1 when full.",
    r#"
local groups = redis.call('SMEMBERS', KEYS[1])
local n = tonumber(ARGV[3])
local lists = {}
if #groups == 0 then
  lists[1] = KEYS[2]
else
  for i, g in ipairs(groups) do lists[i] = ARGV[1] .. g end
end
for _, k in ipairs(lists) do
  if redis.call('LLEN', k) >= n then return -1 end
end
for _, k in ipairs(lists) do redis.call('LPUSH', k, ARGV[2]) end
return #groups
"#
);

script!(
    STREAM_ENQUEUE,
    "KEYS: stream. ARGV: max len, tid, payload. Adds the perform unless the stream already \
     holds max len entries (entries every group has acknowledged are trimmed by the \
     housekeeping, never unconsumed ones). 1 if added, -1 when full.",
    r#"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
redis.call('XADD', KEYS[1], '*', 't', ARGV[2], 'p', ARGV[3])
return 1
"#
);

script!(
    LIST_REGISTER,
    "KEYS: groups, backlog, group list, consumers. ARGV: group, consumer, lease ms. \
     Registers the workgroup (the first one takes the backlog) and refreshes the \
     consumer's presence.",
    r#"
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  if redis.call('EXISTS', KEYS[3]) == 0 then
    if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3]) end
  else
    while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do end
  end
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[4], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[3]), ARGV[2])
return 1
"#
);

script!(
    LIST_TOUCH,
    "KEYS: consumers. ARGV: consumer, lease ms. Refreshes a registered consumer's presence.",
    r#"
local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'XX', 'CH', t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2]), ARGV[1])
"#
);

script!(
    LIST_TAKE,
    "KEYS: group list, processing list. ARGV: n. Moves up to n elements, oldest first.",
    r#"
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[i] = v
end
return out
"#
);

script!(
    LIST_REQUEUE,
    "KEYS: processing list, group list. ARGV: element, new element. Moves the element back \
     to the workgroup's list, next in line. 1 if it was still being processed.",
    r#"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"#
);

script!(
    LIST_REJECT,
    "KEYS: processing list, dead. ARGV: element, dead max len, topic, payload, reason, \
     group. Stores a dead letter and removes the element.",
    r#"
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'topic', ARGV[3], 'payload', ARGV[4],
  'reason', ARGV[5], 'group', ARGV[6])
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 1
"#
);

script!(
    LIST_REAP,
    "KEYS: consumers, group list, dead. ARGV: processing prefix, max deliveries, dead max \
     len, topic prefix, group, consumer or ''. Returns the elements of consumers whose \
     presence expired (or of the named consumer) to the workgroup's list, counting a \
     delivery, or to the dead stream past max deliveries. Returns how many moved.",
    r#"
local victims
if ARGV[6] ~= '' then
  victims = {ARGV[6]}
else
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  victims = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 32)
end
local max = tonumber(ARGV[2])
local moved = 0
for _, c in ipairs(victims) do
  local p = ARGV[1] .. c
  while true do
    local v = redis.call('RPOP', p)
    if not v then break end
    local r, n, rest = string.match(v, '^(%d+):#(%d+):(.*)$')
    if r ~= nil then n = tonumber(n) end
    if r == nil or n > #rest then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'topic', ARGV[4] .. '?/perform',
        'payload', v, 'reason', 'malformed list element', 'group', ARGV[5])
    else
      local tid, payload = string.sub(rest, 1, n), string.sub(rest, n + 1)
      r = tonumber(r) + 1
      if r >= max then
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'topic', ARGV[4] .. tid .. '/perform',
          'payload', payload, 'reason', 'gave up after ' .. r .. ' attempts', 'group', ARGV[5])
      else
        redis.call('RPUSH', KEYS[2], r .. ':#' .. n .. ':' .. rest)
      end
    end
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], c)
end
return moved
"#
);
