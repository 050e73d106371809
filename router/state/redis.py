"""The Redis Store (redis.asyncio): backend state shared by gateway replicas on one Redis.

Layout under the prefix P (every key expires unless written again):

    P:s:{key}        ZSET  samples, score = unix time, member = encoded sample (unique id inside)
    P:c:{bucket}     HASH  counters of one second, field = "replica|name"
    P:inflight       HASH  field = "replica|key", value = "n pushed_at"
    P:e:{key}        STR   "until count": the key's ejection record
    P:p:{key}        STR   the replica holding the key's probe (SET NX PX)
    P:events         channel: "key until count" on ejection, "key -" on restore
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from router.state.base import Batch, Ejection, Listener, Snapshot, StoreUnavailable

log = logging.getLogger("fedrouter.state")

_CLOSE_S = 1.0
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisStore:
    def __init__(self, url: str, prefix: str, replica: str, *, timeout_s: float = 0.5) -> None:
        self.replica = replica
        self._url = url
        self._p = prefix.rstrip(":") + ":"
        # A short timeout: a slow Redis must degrade the view, not hold requests.
        self._redis = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._release = self._redis.register_script(_RELEASE)
        self._listener_task: asyncio.Task[None] | None = None
        self._stale: list[bytes] = []  # in-flight fields of replicas long gone, deleted on the next push

    async def start(self, listener: Listener) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis at {self._url} is not reachable: {exc}") from None
        ready = asyncio.Event()
        self._listener_task = asyncio.create_task(self._listen(listener, ready))
        await asyncio.wait_for(ready.wait(), 5)

    async def close(self) -> None:
        if self._listener_task is not None:
            self._listener_task.cancel()
            # Bounded: closing a pubsub whose read was just cancelled can wait on a connection
            # redis-py still holds, and shutting down must never hang on it.
            await asyncio.wait({self._listener_task}, timeout=_CLOSE_S)
        await close_client(self._redis)

    async def _listen(self, listener: Listener, ready: asyncio.Event) -> None:
        """Apply ejection events as they come; reconnect after a lost connection."""
        channel = self._p + "events"
        while True:
            # Its own client without a read timeout: a subscription is silent most of the time.
            client = Redis.from_url(self._url, socket_timeout=None, socket_connect_timeout=1.0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                ready.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        _dispatch(listener, message["data"])
            except (RedisError, OSError) as exc:
                log.warning("state: lost the Redis subscription (%s); reconnecting", exc)
                ready.set()  # start() must not hang on a Redis that went away
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(_CLOSE_S):
                        await pubsub.aclose()
                        await client.aclose()

    async def push(self, batch: Batch, *, keep: int, ttl_s: float) -> None:
        ttl_ms = int(ttl_s * 1000)
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        for key, rows in batch.samples.items():
            zkey = self._p + "s:" + key
            pipe.zadd(zkey, {raw: ts for ts, raw in rows})
            pipe.zremrangebyrank(zkey, 0, -(keep + 1))
            pipe.pexpire(zkey, ttl_ms)
        for bucket, counters in batch.counts.items():
            ckey = f"{self._p}c:{bucket}"
            for name, n in counters.items():
                pipe.hincrby(ckey, f"{self.replica}|{name}", n)
            pipe.pexpire(ckey, ttl_ms)
        if self._stale:
            pipe.hdel(self._p + "inflight", *self._stale)
            self._stale = []
        if batch.inflight:
            ikey = self._p + "inflight"
            gone = [f"{self.replica}|{k}" for k, n in batch.inflight.items() if not n]
            live: dict[Any, Any] = {f"{self.replica}|{k}": f"{n} {now:.3f}" for k, n in batch.inflight.items() if n}
            if gone:
                pipe.hdel(ikey, *gone)
            if live:
                pipe.hset(ikey, mapping=live)
            pipe.pexpire(ikey, ttl_ms)
        await self._run(pipe)

    async def pull(self, keys: Sequence[str], since: float, buckets: Sequence[int], *, ttl_s: float) -> Snapshot:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrangebyscore(self._p + "s:" + key, f"({since}", "+inf")
        for bucket in buckets:
            pipe.hgetall(f"{self._p}c:{bucket}")
        pipe.hgetall(self._p + "inflight")
        replies = await self._run(pipe)
        out = Snapshot()
        for key, rows in zip(keys, replies, strict=False):
            if rows:
                out.samples[key] = rows
        mine = self.replica.encode() + b"|"
        for bucket, fields in zip(buckets, replies[len(keys) :], strict=False):
            for f, n in fields.items():
                if not f.startswith(mine):
                    name = f.partition(b"|")[2].decode()
                    counts = out.counts.setdefault(bucket, {})
                    counts[name] = counts.get(name, 0) + int(n)
        oldest = time.time() - ttl_s
        for f, value in replies[-1].items():
            n, _, pushed = value.partition(b" ")
            if float(pushed) < oldest - 10 * ttl_s:
                self._stale.append(f)
            elif not f.startswith(mine) and float(pushed) > oldest:
                key = f.partition(b"|")[2].decode()
                out.inflight[key] = out.inflight.get(key, 0) + int(n)
        return out

    async def ejections(self, keys: Sequence[str]) -> dict[str, Ejection]:
        if not keys:
            return {}
        try:
            values = await self._redis.mget([self._p + "e:" + k for k in keys])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from None
        return {
            k: _ejection(v if isinstance(v, bytes) else v.encode())
            for k, v in zip(keys, values, strict=True)
            if v is not None
        }

    async def eject(self, key: str, ejection: Ejection, ttl_s: float) -> None:
        value = f"{ejection.until:.3f} {ejection.count}"
        pipe = self._redis.pipeline(transaction=True)  # the record exists before anyone hears of it
        pipe.set(self._p + "e:" + key, value, px=int(ttl_s * 1000))
        pipe.publish(self._p + "events", f"{key} {value}")
        await self._run(pipe)

    async def restore(self, key: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._p + "e:" + key)
        pipe.publish(self._p + "events", f"{key} -")
        await self._run(pipe)

    async def claim_probe(self, key: str, ttl_s: float) -> bool:
        try:
            return bool(await self._redis.set(self._p + "p:" + key, self.replica, nx=True, px=int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from None

    async def release_probe(self, key: str) -> None:
        try:
            await self._release(keys=[self._p + "p:" + key], args=[self.replica])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from None

    async def _run(self, pipe: Any) -> list[Any]:
        try:
            return await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from None


async def close_client(client: Redis, **options: bool) -> None:
    """``client.aclose()``, bounded: disconnecting awaits each socket's ``wait_closed``, which can
    wait for ever (redis-py issue 3941), and shutting down must not."""
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        async with asyncio.timeout(_CLOSE_S):
            await client.aclose(**options)


def _ejection(value: bytes) -> Ejection:
    until, _, count = value.partition(b" ")
    return Ejection(float(until), int(count))


def _dispatch(listener: Listener, data: bytes) -> None:
    key, _, rest = data.decode().partition(" ")
    listener(key, None if rest == "-" else _ejection(rest.encode()))
