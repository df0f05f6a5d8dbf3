"""Pool slots shared by every replica: leases and one fair-share queue per pool, in Redis.

Each pool (a backend's, or a lane's) has, under ``<namespace>slots:<pool>``:

- ``:held``, the leases: a sorted set of lease ids scored by their expiry (milliseconds on Redis's
  own clock). A slot is held while its lease is there and not expired; the replica holding it
  renews it every heartbeat (``sync``), so a replica killed with ``kill -9`` gives its slots back
  when their leases lapse, within ``cluster.lease_ttl``, without anyone noticing its death.
- the queue, the same discipline as ``laneway.pools.queue.FairQueue`` but cluster-wide: priority
  classes (``:prio``, a sorted set), in each a rotation of callers (``:rot:<priority>``, a list),
  each caller's tickets first in, first out (``:w:<priority>:<caller>``, a list), and every queued
  ticket's owner (``:t``, a hash: ticket -> {replica, priority, caller}).

Every change is one Lua script, so it is atomic: nothing can interleave a check and its write. A
script that frees a slot (a lease given back, or one that lapsed) hands it to the next ticket at once —
the lease id is the ticket — and tells the ticket's replica on its own bus channel
(``slot.granted``), so a request queued on one replica is served when a request on another ends.
A ticket whose replica is no longer alive (``slots:replicas``, renewed by every call) is dropped
when its turn comes, so a dead replica's queue does not hold anyone up.

What is lost in transit is found again: ``sync`` renews what a replica holds (re-taking a lease
that Redis lost, as after a restart), re-queues its tickets that Redis lost, and reports which of
its tickets were granted meanwhile (a grant message missed while its subscription was down).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from laneway.pools.ledger import Answer, Synced
from laneway.storage.redisstore import RedisStore

# Functions every script shares. KEYS[1]: the pool's base key; KEYS[2]: the live replicas (a
# sorted set: replica -> lease expiry, ms). Times are Redis's own (TIME), in milliseconds.
_PRELUDE = """
local base, live = KEYS[1], KEYS[2]
local held, tickets, prios = base .. ':held', base .. ':t', base .. ':prio'
local byrep = base .. ':r'  -- replica -> how many tickets it has queued

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function waiting(p, caller) return base .. ':w:' .. p .. ':' .. caller end

-- Queue a ticket; true if it is its replica's only one queued for the pool now.
local function push(ticket, replica, p, caller)
  redis.call('HSET', tickets, ticket, cjson.encode({r = replica, p = p, c = caller}))
  if redis.call('RPUSH', waiting(p, caller), ticket) == 1 then
    redis.call('RPUSH', base .. ':rot:' .. p, caller)
  end
  redis.call('ZADD', prios, tonumber(p), p)
  return redis.call('HINCRBY', byrep, replica, 1) == 1
end

local function gone(replica)
  if redis.call('HINCRBY', byrep, replica, -1) <= 0 then redis.call('HDEL', byrep, replica) end
end

-- Take a queued ticket out wherever it is; false if it was not queued.
local function unqueue(ticket)
  local raw = redis.call('HGET', tickets, ticket)
  if not raw then return false end
  local t = cjson.decode(raw)
  redis.call('HDEL', tickets, ticket)
  gone(t.r)
  local w = waiting(t.p, t.c)
  redis.call('LREM', w, 1, ticket)
  if redis.call('LLEN', w) == 0 then
    local rot = base .. ':rot:' .. t.p
    redis.call('LREM', rot, 1, t.c)
    if redis.call('LLEN', rot) == 0 then redis.call('ZREM', prios, t.p) end
  end
  return true
end

-- The next ticket to serve, out of the queue: the highest priority, the caller at the head of
-- its rotation (then moved to the tail if it still waits), that caller's oldest ticket.
local function pop()
  local top = redis.call('ZREVRANGE', prios, 0, 0)
  if #top == 0 then return nil, nil end
  local p = top[1]
  local rot = base .. ':rot:' .. p
  local caller = redis.call('LINDEX', rot, 0)
  local w = waiting(p, caller)
  local ticket = redis.call('LPOP', w)
  local raw = redis.call('HGET', tickets, ticket)
  redis.call('HDEL', tickets, ticket)
  local replica = cjson.decode(raw).r
  gone(replica)
  if redis.call('LLEN', w) == 0 then
    redis.call('LPOP', rot)
    if redis.call('LLEN', rot) == 0 then redis.call('ZREM', prios, p) end
  else
    redis.call('LMOVE', rot, rot, 'LEFT', 'RIGHT')
  end
  return ticket, replica
end

local function alive(replica, now)
  local expiry = redis.call('ZSCORE', live, replica)
  return expiry and tonumber(expiry) >= now
end

-- Lapsed leases go; free slots go to the next tickets, whose replicas are told. The tickets of
-- the replica calling (``me``) are put in ``mine`` instead: its answer tells it, with no message.
local function assign(pool, slots, now, ttl, channels, me, mine)
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  while redis.call('ZCARD', held) < slots do
    local ticket, replica = pop()
    if not ticket then break end
    if replica == me then
      redis.call('ZADD', held, now + ttl, ticket)
      table.insert(mine, ticket)
    elseif alive(replica, now) then
      redis.call('ZADD', held, now + ttl, ticket)
      redis.call('PUBLISH', channels .. replica, cjson.encode(
        {topic = 'slot.granted', from = '', payload = {pool = pool, ticket = ticket}}))
    end
  end
end

-- The pool's count: held, queued, how many replicas are alive (for their local shares, should
-- Redis go) and how many tickets other replicas than ``me`` have queued.
local function counts(now, me)
  local q = redis.call('HLEN', tickets)
  local own = tonumber(redis.call('HGET', byrep, me) or '0')
  return redis.call('ZCARD', held), q, redis.call('ZCOUNT', live, now, '+inf'), q - own
end
"""

# ARGV: pool, replica, slots, ttl, channels, ticket, priority, caller, queue_size, broadcast
# -> {1 granted | 0 queued | 2 queue full, held, queued, replicas, its other tickets granted now,
# tickets other replicas have queued}. A replica's first ticket to queue tells every
# replica (``slot.wanted`` on the broadcast channel): their spare leases are wanted.
_ACQUIRE = (
    _PRELUDE
    + """
local pool, replica, slots, ttl, channels = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local ticket, p, caller, queue_size, broadcast = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local now = now_ms()
redis.call('ZADD', live, now + ttl, replica)
local mine = {}
assign(pool, slots, now, ttl, channels, replica, mine)
local n, q, r, e = counts(now, replica)
if n < slots then  -- after assign, a free slot means nobody waits
  redis.call('ZADD', held, now + ttl, ticket)
  return {1, n + 1, q, r, mine, e}
end
if q >= queue_size then return {2, n, q, r, mine, e} end
if push(ticket, replica, p, caller) then
  redis.call('PUBLISH', broadcast, cjson.encode(
    {topic = 'slot.wanted', from = '', payload = {pool = pool, replica = replica}}))
end
return {0, n, q + 1, r, mine, e}
"""
)

# A queued request leaves. ARGV: pool, replica, slots, ttl, channels, ticket, give_back
# -> {0 left the queue | 1 it holds a lease (granted meanwhile) | 2 its lease was given back |
#     -1 unknown, held, queued, replicas, this replica's tickets granted now}
_LEAVE = (
    _PRELUDE
    + """
local pool, replica, slots, ttl, channels = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local ticket, give_back = ARGV[6], ARGV[7] == '1'
local now = now_ms()
local outcome = -1
local mine = {}
if unqueue(ticket) then
  outcome = 0
elseif redis.call('ZSCORE', held, ticket) then
  outcome = 1
  if give_back then
    redis.call('ZREM', held, ticket)
    assign(pool, slots, now, ttl, channels, replica, mine)
    outcome = 2
  end
end
local n, q, r, e = counts(now, replica)
return {outcome, n, q, r, mine, e}
"""
)

# A slot handed over on its replica to a request queued there. ARGV: pool, replica, slots, ttl,
# channels, lease, ticket -> {1 the lease is the ticket's now | 2 the ticket held a lease already
# (granted meanwhile): this one is given back | 3 the ticket was not queued (Redis lost it): the
# slot is the ticket's, held, queued, replicas, this replica's tickets granted now}
_TRANSFER = (
    _PRELUDE
    + """
local pool, replica, slots, ttl, channels = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local lease, ticket = ARGV[6], ARGV[7]
local now = now_ms()
redis.call('ZADD', live, now + ttl, replica)
local outcome, mine = 1, {}
redis.call('ZREM', held, lease)
if unqueue(ticket) then
  redis.call('ZADD', held, now + ttl, ticket)
elseif redis.call('ZSCORE', held, ticket) then
  outcome = 2
else
  redis.call('ZADD', held, now + ttl, ticket)
  outcome = 3
end
assign(pool, slots, now, ttl, channels, replica, mine)
local n, q, r, e = counts(now, replica)
return {outcome, n, q, r, mine, e}
"""
)

# A replica's heartbeat for one pool. ARGV: pool, replica, slots, ttl, channels, #held, #gone,
# broadcast, then the held leases, the leases to give back, and (ticket, priority, caller) per
# queued ticket.
# -> {granted tickets, held, queued, ms until the next lease lapses (-1: none), live replicas,
#     tickets other replicas have queued}
_SYNC = (
    _PRELUDE
    + """
local pool, replica, slots, ttl, channels = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n_held, n_gone, broadcast = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local now = now_ms()
redis.call('ZADD', live, now + ttl, replica)
redis.call('ZREMRANGEBYSCORE', live, '-inf', now - 60000)
local i = 9
for _ = 1, n_held do  -- renewed, or re-taken (Redis lost it); never also queued
  redis.call('ZADD', held, now + ttl, ARGV[i]); unqueue(ARGV[i]); i = i + 1
end
for _ = 1, n_gone do redis.call('ZREM', held, ARGV[i]); i = i + 1 end
local mine = {}
while i + 2 <= #ARGV do
  local ticket, p, caller = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  -- (HEXISTS answers 0 or 1, and 0 is true in Lua: compare it)
  if not redis.call('ZSCORE', held, ticket) and redis.call('HEXISTS', tickets, ticket) == 0 then
    -- Redis lost it (a restart): in the queue again, and the others told, as on an acquire
    if push(ticket, replica, p, caller) then
      redis.call('PUBLISH', broadcast, cjson.encode(
        {topic = 'slot.wanted', from = '', payload = {pool = pool, replica = replica}}))
    end
  end
  table.insert(mine, ticket)
  i = i + 3
end
assign(pool, slots, now, ttl, channels, replica, {})  -- its own: found just below
local granted = {}
for _, ticket in ipairs(mine) do
  if redis.call('ZSCORE', held, ticket) then
    redis.call('ZADD', held, now + ttl, ticket)
    table.insert(granted, ticket)
  end
end
local n, q, r, e = counts(now, replica)
local first = redis.call('ZRANGE', held, 0, 0, 'WITHSCORES')
local next_lapse = -1
if #first == 2 then next_lapse = math.max(0, tonumber(first[2]) - now) end
return {granted, n, q, next_lapse, r, e}
"""
)


# Who holds and who waits, by replica (a lease's and a ticket's id start with their replica's).
# -> {replica, held, queued, replica, held, queued, ...}
_CENSUS = (
    _PRELUDE
    + """
local now = now_ms()
local by = {}
local order = {}
local function count(replica, i)
  if not by[replica] then by[replica] = {0, 0}; table.insert(order, replica) end
  by[replica][i] = by[replica][i] + 1
end
for _, lease in ipairs(redis.call('ZRANGEBYSCORE', held, now, '+inf')) do
  count(string.match(lease, '^(.*)#[^#]*$') or lease, 1)
end
local all = redis.call('HGETALL', tickets)
for i = 2, #all, 2 do count(cjson.decode(all[i]).r, 2) end
local out = {}
for _, replica in ipairs(order) do
  table.insert(out, replica); table.insert(out, by[replica][1]); table.insert(out, by[replica][2])
end
return out
"""
)


def answer(raw: list[Any]) -> Answer:
    """A script's reply: four counts, the calling replica's tickets it granted, and how many
    tickets other replicas have queued."""
    outcome, held, queued, replicas, mine, elsewhere = raw
    return Answer(
        int(outcome), int(held), int(queued), int(replicas), tuple(map(_text, mine)), int(elsewhere)
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(eq=False)
class RedisSlots:
    """The ``laneway.pools.ledger.Ledger`` on Redis: what every ``SharedPool`` of this replica
    asks. ``channels`` is the prefix of the replicas' own bus channels (``RedisBus``), where a
    grant is told to the replica whose ticket it is."""

    store: RedisStore
    replica: str
    lease_ttl: float
    channels: str  # the prefix of each replica's own channel
    broadcast: str  # the channel every replica hears

    def ticket(self) -> str:
        """A new ticket (and lease) id, unique across the cluster: this replica's id and 12
        random hex digits."""
        return f"{self.replica}#{secrets.token_hex(6)}"

    def _keys(self, pool: str) -> list[str]:
        return [f"slots:{pool}", "slots:replicas"]

    def _common(self, pool: str, slots: int) -> list[str | int | float | bytes]:
        return [pool, self.replica, slots, round(self.lease_ttl * 1000), self.channels]

    async def acquire(
        self, pool: str, slots: int, ticket: str, caller: str, priority: int, queue_size: int
    ) -> Answer:
        raw = await self.store.evaluate(
            _ACQUIRE,
            self._keys(pool),
            [*self._common(pool, slots), ticket, str(priority), caller, queue_size, self.broadcast],
        )
        return answer(raw)

    async def leave(self, pool: str, slots: int, ticket: str, *, give_back: bool) -> Answer:
        args = [*self._common(pool, slots), ticket, "1" if give_back else "0"]
        raw = await self.store.evaluate(_LEAVE, self._keys(pool), args)
        return answer(raw)

    async def transfer(self, pool: str, slots: int, lease: str, ticket: str) -> Answer:
        raw = await self.store.evaluate(
            _TRANSFER, self._keys(pool), [*self._common(pool, slots), lease, ticket]
        )
        return answer(raw)

    async def census(self, pool: str) -> dict[str, tuple[int, int]]:
        raw = await self.store.evaluate(_CENSUS, self._keys(pool), [])
        return {
            _text(raw[i]): (
                int(raw[i + 1]),
                int(raw[i + 2]),
            )
            for i in range(0, len(raw), 3)
        }

    async def sync(
        self,
        pool: str,
        slots: int,
        held: Sequence[str],
        gone: Sequence[str],
        queued: Sequence[tuple[str, int, str]],
    ) -> Synced:
        args: list[str | int | float | bytes] = [
            *self._common(pool, slots),
            len(held),
            len(gone),
            self.broadcast,
            *held,
            *gone,
        ]
        for ticket, priority, caller in queued:
            args += [ticket, str(priority), caller]
        granted, n, q, next_lapse, replicas, elsewhere = await self.store.evaluate(
            _SYNC, self._keys(pool), args
        )
        return Synced(
            granted=[_text(t) for t in granted],
            held=int(n),
            queued=int(q),
            next_lapse=None if int(next_lapse) < 0 else int(next_lapse) / 1000,
            replicas=max(1, int(replicas)),
            elsewhere=int(elsewhere),
        )
