"""Admission in Redis: the limits and budgets of ``router.tenancy.admission.base``, shared by every gateway process.

Each admit and each settle is one Lua script call (one round trip, atomic in Redis), running the
same rules as ``LocalAdmission`` on Redis's own clock. Keys, under the configured prefix:

    rl:<bucket>            a GCRA bucket's theoretical arrival time (ms), expiring when full again
    cc:<counter>           stream slots: a sorted set of request ids scored by lease expiry (ms)
    bs:<tenant>:<line>     a budget period's spend (1e-9 units), seeded from the ledger (SET NX)
    br:<tenant>            what requests in flight hold, per metric (hash usd/kwh/kg_co2e)
    bq:<tenant> bx:<tenant>  each request's reservation, and when its lease runs out

A gateway that dies mid-request leaves its slots and reservations behind; they lapse when their
lease does (the longest a request can take), so a crash errs on the side of refusing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.config import Budget
from router.errors import GatewayError
from router.ledger.base import Ledger, UsageRecord
from router.state.redis import close_client
from router.tenancy.admission.base import BUDGET_WARNING, Demand, Ticket, tokens_of
from router.tenancy.budgets import (
    ZERO,
    Amounts,
    Line,
    LineCache,
    ledger_spend,
    lines,
    of_record,
    refusal,
    report,
    warning,
)
from router.tenancy.limits import (
    WINDOW_S,
    Bucket,
    Verdict,
    buckets,
    concurrency_refused,
    first_refusal,
    headers,
    stream_slots,
)
from router.tenancy.limits import too_large as too_large_for

log = logging.getLogger("fedrouter")

_RESERVATIONS = """
local function give_back(held, field, amount)
  -- integers go to Redis as the strings they came in (a Lua number may print as 1e+15); '-0' is no integer
  if amount ~= '0' then redis.call('HINCRBY', held, field, '-' .. amount) end
end
local function release(held, rq, rx, id)
  local v = redis.call('HGET', rq, id)
  if v then
    local u, w, g = string.match(v, '(%d+) (%d+) (%d+)')
    give_back(held, 'usd', u)
    give_back(held, 'kwh', w)
    give_back(held, 'kg_co2e', g)
    redis.call('HDEL', rq, id)
  end
  redis.call('ZREM', rx, id)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_ADMIT = (
    _RESERVATIONS
    + """
local id, lease = ARGV[1], tonumber(ARGV[2])
local R, C, B, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local amount = {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local held, rq, rx = KEYS[R + C + B + 1], KEYS[R + C + B + 2], KEYS[R + C + B + 3]
local missing = {}
for j = 1, B do
  if redis.call('EXISTS', KEYS[R + C + j]) == 0 then missing[#missing + 1] = j end
end
if #missing > 0 then return {'seed', missing} end
local a = 10 + 2 * R
for k = 1, C do
  redis.call('ZREMRANGEBYSCORE', KEYS[R + k], '-inf', now)
  if redis.call('ZCARD', KEYS[R + k]) >= tonumber(ARGV[a]) then return {'streams', k} end
  a = a + 1
end
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', rx, '-inf', now, 'LIMIT', 0, 100)) do
  release(held, rq, rx, stale)
end
local h = redis.call('HMGET', held, 'usd', 'kwh', 'kg_co2e')
local warn = {}
for j = 1, B do
  local m, hard, soft = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local spend, hold = tonumber(redis.call('GET', KEYS[R + C + j])), tonumber(h[m]) or 0
  if hard >= 0 and spend + hold + amount[m] > hard then return {'budget', j, spend, hold} end
  if soft >= 0 and spend + hold + amount[m] > soft then
    warn[#warn + 1] = j; warn[#warn + 1] = spend; warn[#warn + 1] = hold + amount[m]
  end
end
local verdicts, news, refused = {}, {}, false
for i = 1, R do
  local limit, cost = tonumber(ARGV[8 + 2 * i]), tonumber(ARGV[9 + 2 * i])
  local step = window / limit
  local base = math.max(tonumber(redis.call('GET', KEYS[i])) or now, now)
  local new = base + cost * step
  if new - now > window then
    refused = true
    news[i] = false
    verdicts[#verdicts + 1] = math.floor((window - (base - now)) / step + 1e-9)
    verdicts[#verdicts + 1] = math.ceil(base - now)
    verdicts[#verdicts + 1] = math.ceil(new - now - window)
  else
    news[i] = new
    verdicts[#verdicts + 1] = math.floor((window - (new - now)) / step + 1e-9)
    verdicts[#verdicts + 1] = math.ceil(new - now)
    verdicts[#verdicts + 1] = -1
  end
end
if refused then return {'rate', verdicts} end
for i = 1, R do
  redis.call('SET', KEYS[i], string.format('%.3f', news[i]), 'PX', math.ceil(news[i] - now) + 1000)
end
for k = 1, C do
  redis.call('ZADD', KEYS[R + k], now + lease, id)
  redis.call('PEXPIRE', KEYS[R + k], ARGV[2])
end
if B > 0 then
  redis.call('HINCRBY', held, 'usd', ARGV[7])
  redis.call('HINCRBY', held, 'kwh', ARGV[8])
  redis.call('HINCRBY', held, 'kg_co2e', ARGV[9])
  redis.call('HSET', rq, id, ARGV[7] .. ' ' .. ARGV[8] .. ' ' .. ARGV[9])
  redis.call('ZADD', rx, now + lease, id)
end
return {'ok', verdicts, warn}
"""
)

_SETTLE = (
    _RESERVATIONS
    + """
local id, T, C, B, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local held, rq, rx = KEYS[T + C + B + 1], KEYS[T + C + B + 2], KEYS[T + C + B + 3]
for i = 1, T do
  local limit, delta = tonumber(ARGV[7 + 2 * i]), tonumber(ARGV[8 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local new = tat + delta * window / limit
    if delta >= 0 then new = math.max(tat, now) + delta * window / limit end
    if new > now then
      redis.call('SET', KEYS[i], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
for k = 1, C do redis.call('ZREM', KEYS[T + k], id) end
release(held, rq, rx, id)
local a = 9 + 2 * T
for j = 1, B do
  local m = tonumber(ARGV[a + j - 1])
  if redis.call('EXISTS', KEYS[T + C + j]) == 1 then
    redis.call('INCRBY', KEYS[T + C + j], ARGV[5 + m])
  end
end
return 1
"""
)


class StateUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "state_unavailable"


class RedisAdmission:
    """Limits and budgets in one Redis, for any number of gateway processes."""

    def __init__(self, url: str, prefix: str, ledger: Ledger, lease_s: float) -> None:
        # Requests wait for one of a bounded set of connections rather than failing at 100 in flight.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=5.0, socket_timeout=5.0, socket_connect_timeout=2.0
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._prefix = prefix
        self._ledger = ledger
        self._lease_ms = int(lease_s * 1000)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lines = LineCache()

    def _tenant_keys(self, tenant: str, wanted: list[Line]) -> list[str]:
        p = self._prefix
        return [
            *(f"{p}bs:{tenant}:{line.key}" for line in wanted),
            f"{p}br:{tenant}",
            f"{p}bq:{tenant}",
            f"{p}bx:{tenant}",
        ]

    async def _seed(self, tenant: str, wanted: list[Line]) -> None:
        for line in wanted:
            spend = await ledger_spend(self._ledger, tenant, line)
            await self._redis.set(f"{self._prefix}bs:{tenant}:{line.key}", spend, nx=True, ex=line.ttl_s)

    async def admit(self, demand: Demand) -> Ticket:
        # Shielded: once the script has run, a cancelled caller must not leave its reservation behind.
        task = self._spawn(self._run_admit(demand))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._undo)
            raise

    def _undo(self, task: asyncio.Task[Ticket]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._spawn(self._run_settle(task.result(), None))

    async def _run_admit(self, demand: Demand) -> Ticket:
        wanted = self._lines(demand.budgets, demand.received)
        draws = buckets(demand.tenant, demand.key_id, demand.limits, demand.key_limits, demand.tokens)
        for bucket in draws:
            if err := too_large_for(bucket):
                raise err
        slots = stream_slots(demand.tenant, demand.key_id, demand.limits, demand.key_limits) if demand.stream else []
        p = self._prefix
        keys = [
            *(f"{p}rl:{b.key}" for b in draws),
            *(f"{p}cc:{c}" for c, _ in slots),
            *self._tenant_keys(demand.tenant, wanted),
        ]
        args: list[Any] = [
            demand.request_id,
            self._lease_ms,
            len(draws),
            len(slots),
            len(wanted),
            int(WINDOW_S * 1000),
            *demand.worst,
        ]
        args += [x for b in draws for x in (b.limit, b.cost)] + [limit for _, limit in slots]
        args += [x for line in wanted for x in (line.index + 1, _or_minus(line.hard), _or_minus(line.soft))]
        for _ in range(3):
            try:
                result = await self._admit(keys=keys, args=args)
            except RedisError as exc:
                raise StateUnavailable(f"The gateway's shared state is unavailable: {exc}") from None
            status = result[0].decode()
            if status != "seed":
                break
            await self._seed(demand.tenant, [wanted[j - 1] for j in result[1]])
        if status == "streams":
            counter, limit = slots[result[1] - 1]
            raise concurrency_refused(counter, limit)
        if status == "budget":
            line = wanted[result[1] - 1]
            raise refusal(demand.tenant, line, result[2], result[3], demand.worst[line.index])
        verdicts = _verdicts(draws, result[1])
        if status == "rate":
            raise first_refusal(verdicts)
        if status != "ok":
            raise StateUnavailable(f"Unexpected answer from the shared state: {status}")
        out = headers(verdicts)
        warn = result[2]
        if warn:
            out[BUDGET_WARNING] = "; ".join(
                warning(wanted[warn[i] - 1], warn[i + 1], warn[i + 2]) for i in range(0, len(warn), 3)
            )
        return Ticket(demand, draws, slots, wanted, out, demand.worst if wanted else ZERO)

    async def settle(self, ticket: Ticket, record: UsageRecord | None) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        await asyncio.shield(self._spawn(self._run_settle(ticket, record)))

    async def _run_settle(self, ticket: Ticket, record: UsageRecord | None) -> None:
        d = ticket.demand
        tpm = [b for b in ticket.buckets if b.kind == "tokens"]
        keys = [
            *(f"{self._prefix}rl:{b.key}" for b in tpm),
            *(f"{self._prefix}cc:{c}" for c, _ in ticket.slots),
            *self._tenant_keys(d.tenant, ticket.lines),
        ]
        actual = of_record(record) if ticket.lines else ZERO
        args: list[Any] = [d.request_id, len(tpm), len(ticket.slots), len(ticket.lines), int(WINDOW_S * 1000), *actual]
        args += [x for b in tpm for x in (b.limit, tokens_of(record) - b.cost)]
        args += [line.index + 1 for line in ticket.lines]
        for attempt in range(5):
            try:
                await self._settle(keys=keys, args=args)
                return
            except RedisError as exc:
                log.warning("settling %s failed (attempt %d): %s", d.request_id, attempt + 1, exc)
                await asyncio.sleep(0.1 * 2**attempt)
        log.error(
            "settling %s gave up: its cost %s is not counted against %s's budgets", d.request_id, actual, d.tenant
        )

    async def prime(self, tenant: str, budgets: list[Budget]) -> None:
        wanted = lines(budgets, time.time())
        if wanted:
            await self._seed(tenant, wanted)

    async def budgets(self, tenant: str, budgets: list[Budget]) -> list[dict[str, Any]]:
        wanted = lines(budgets, time.time())
        if not wanted:
            return []
        await self._seed(tenant, wanted)
        keys = self._tenant_keys(tenant, wanted)
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in keys[: len(wanted)]:
                pipe.get(key)
            pipe.hmget(keys[len(wanted)], ["usd", "kwh", "kg_co2e"])
            *spends, held = await pipe.execute()
        amounts = Amounts(*(int(h or 0) for h in held))
        return [report(line, int(s or 0), amounts[line.index]) for line, s in zip(wanted, spends, strict=True)]

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_client(self._redis, close_connection_pool=True)  # a pool given to Redis() is not closed by default


def _verdicts(draws: list[Bucket], packed: list[int]) -> list[tuple[Bucket, Verdict]]:
    """The script's answer for each bucket, three integers apiece: remaining, reset and retry (ms, -1 none)."""
    return [
        (
            b,
            Verdict(
                b.limit,
                packed[3 * i],
                packed[3 * i + 1] / 1000,
                None if packed[3 * i + 2] < 0 else packed[3 * i + 2] / 1000,
            ),
        )
        for i, b in enumerate(draws)
    ]


def _or_minus(value: int | None) -> int:
    return -1 if value is None else value


__all__ = ["RedisAdmission", "StateUnavailable"]
