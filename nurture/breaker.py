"""A circuit breaker for sending: when too many recent SMTP attempts fail (4xx, 5xx, unreachable), stop
sending for a cool-down instead of burning retries and reputation. Shared through Redis across workers when
the broker is Redis, else per process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: float  # failure ratio that opens the breaker, e.g. 0.5
    min_volume: int  # attempts in the window before the ratio counts
    window: float  # seconds of history considered
    cooldown: float  # seconds the breaker stays open


class Breaker(Protocol):
    def record(self, ok: bool) -> None: ...

    def open_for(self) -> float:
        """Seconds until sending may resume; 0 when closed."""
        ...


class LocalBreaker:
    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.events: deque[tuple[float, bool]] = deque()
        self.open_until = 0.0
        self.lock = threading.Lock()

    def record(self, ok: bool) -> None:
        with self.lock:
            current = time.monotonic()
            self.events.append((current, ok))
            while self.events and self.events[0][0] < current - self.policy.window:
                self.events.popleft()
            failures = sum(1 for _, good in self.events if not good)
            if (
                len(self.events) >= self.policy.min_volume
                and failures / len(self.events) >= self.policy.threshold
            ):
                self.open_until = current + self.policy.cooldown
                self.events.clear()
                log.warning(
                    "circuit breaker open for %.0fs: %d of the last attempts failed",
                    self.policy.cooldown,
                    failures,
                )

    def open_for(self) -> float:
        return max(0.0, self.open_until - time.monotonic())


class RedisBreaker:
    """Counts attempts in 10-second buckets by the Redis server clock; ``open`` is a key with a TTL."""

    BUCKET = 10

    def __init__(self, client, prefix: str, policy: BreakerPolicy) -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.prefix = prefix
        self.policy = policy

    def _buckets(self) -> list[int]:
        seconds = int(self.client.time()[0])
        current = seconds // self.BUCKET
        return [current - i for i in range(max(1, int(self.policy.window // self.BUCKET)))]

    def record(self, ok: bool) -> None:
        import redis

        try:
            self._record(ok)
        except redis.RedisError as exc:
            # The breaker protects sending; losing its memory must not stop sending.
            log.warning("circuit breaker: Redis unavailable (%s); not counting this attempt", exc)

    def _record(self, ok: bool) -> None:
        buckets = self._buckets()
        key = f"{self.prefix}:{buckets[0]}:{'ok' if ok else 'fail'}"
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, int(self.policy.window) + self.BUCKET)
        pipe.mget([f"{self.prefix}:{b}:{kind}" for b in buckets for kind in ("ok", "fail")])
        values = pipe.execute()[2]
        oks = sum(int(v or 0) for v in values[0::2])
        fails = sum(int(v or 0) for v in values[1::2])
        total = oks + fails
        if total >= self.policy.min_volume and fails / total >= self.policy.threshold:
            opened = self.client.set(f"{self.prefix}:open", "1", px=int(self.policy.cooldown * 1000), nx=True)
            if opened:
                self.client.delete(*[f"{self.prefix}:{b}:{kind}" for b in buckets for kind in ("ok", "fail")])
                log.warning(
                    "circuit breaker open for %.0fs: %d of %d recent attempts failed",
                    self.policy.cooldown,
                    fails,
                    total,
                )

    def open_for(self) -> float:
        import redis

        try:
            ttl = self.client.pttl(f"{self.prefix}:open")
        except redis.RedisError:
            return 0.0  # fail open: an unreachable Redis says nothing about the SMTP server
        return max(0.0, ttl / 1000) if ttl and ttl > 0 else 0.0


class NeverOpen:
    """The breaker for callers that were given none: counts nothing, never opens."""

    def record(self, ok: bool) -> None:
        pass

    def open_for(self) -> float:
        return 0.0
