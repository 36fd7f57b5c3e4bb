"""Sending-rate limit per SMTP transport: a token bucket, shared by every worker through Redis when the broker
is Redis, or kept in the process on the embedded defaults (one worker machine).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    def acquire(self) -> float:
        """Block until one message may go; return the seconds waited."""
        ...


class Unlimited:
    def acquire(self) -> float:
        return 0.0


class LocalBucket:
    """A token bucket in this process; burst is one second's worth of tokens (at least one)."""

    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self.burst = max(1.0, per_second)
        self.tokens = self.burst
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def _take(self) -> float:
        with self.lock:
            current = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (current - self.updated) * self.rate)
            self.updated = current
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate

    def acquire(self) -> float:
        waited = 0.0
        while (wait := self._take()) > 0:
            time.sleep(wait)
            waited += wait
        return waited


# Atomic take-a-token in Redis, timed by the Redis server's clock so workers on different machines agree.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return wait
"""


class RedisBucket:
    """Shared by every worker; while Redis is unreachable, each process falls back to its own bucket at the
    full rate, so sending goes on (a little faster than allowed with several workers) instead of stopping."""

    def __init__(self, client, key: str, per_second: float) -> None:  # type: ignore[no-untyped-def]
        self.key = key
        self.rate = per_second
        self.burst = max(1.0, per_second)
        self._take = client.register_script(_TAKE)
        self._fallback = LocalBucket(per_second)

    def acquire(self) -> float:
        import redis

        waited = 0.0
        try:
            while (wait_ms := int(self._take(keys=[self.key], args=[self.rate, self.burst]))) > 0:
                time.sleep(wait_ms / 1000)
                waited += wait_ms / 1000
        except redis.RedisError as exc:
            log.warning("rate limiter: Redis unavailable (%s); limiting this process only", exc)
            waited += self._fallback.acquire()
        return waited
