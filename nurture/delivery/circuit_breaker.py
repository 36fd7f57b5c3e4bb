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
    """Counts attempts in 10-second buckets by the Redis server clock; ``open`` is a key with a TTL.

    It sits on every email's path, so it keeps Redis round trips off it: successes are counted locally and
    added in one pipeline at most once a second (or every ``FLUSH_EVERY``), a failure is counted at once
    (it may open the breaker), the Redis clock is read once a minute (an offset to this machine's), and the
    open state is read at most once a second. A breaker opened by another worker so stops this one within
    a second; its own failures open it at once.
    """

    BUCKET = 10
    FLUSH_EVERY = 50
    FLUSH_SECONDS = 1.0
    STATE_SECONDS = 1.0
    CLOCK_SECONDS = 60.0

    def __init__(self, client, prefix: str, policy: BreakerPolicy) -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.prefix = prefix
        self.policy = policy
        self.lock = threading.Lock()
        self.unflushed_ok = 0
        self.flushed_at = time.monotonic()
        self.clock_offset: float | None = None  # Redis server time minus this machine's time
        self.clock_read_at = 0.0
        self.state_read_at = -self.STATE_SECONDS
        self.open_until = 0.0  # monotonic

    def _buckets(self) -> list[int]:
        if self.clock_offset is None or time.monotonic() - self.clock_read_at > self.CLOCK_SECONDS:
            seconds, micros = self.client.time()
            self.clock_offset = seconds + micros / 1e6 - time.time()
            self.clock_read_at = time.monotonic()
        current = int(time.time() + self.clock_offset) // self.BUCKET
        return [current - i for i in range(max(1, int(self.policy.window // self.BUCKET)))]

    def record(self, ok: bool) -> None:
        import redis

        with self.lock:
            if ok:
                self.unflushed_ok += 1
                due = time.monotonic() - self.flushed_at >= self.FLUSH_SECONDS
                if self.unflushed_ok < self.FLUSH_EVERY and not due:
                    return
            oks, self.unflushed_ok = self.unflushed_ok, 0
            self.flushed_at = time.monotonic()
            try:
                self._record(oks, 0 if ok else 1)
            except redis.RedisError as exc:
                # The breaker protects sending; losing its memory must not stop sending.
                log.warning("circuit breaker: Redis unavailable (%s); not counting these attempts", exc)

    def _record(self, oks: int, fails: int) -> None:
        buckets = self._buckets()
        keys = [f"{self.prefix}:{b}:{kind}" for b in buckets for kind in ("ok", "fail")]
        pipe = self.client.pipeline()
        for kind, count in (("ok", oks), ("fail", fails)):
            if count:
                key = f"{self.prefix}:{buckets[0]}:{kind}"
                pipe.incrby(key, count)
                pipe.expire(key, int(self.policy.window) + self.BUCKET)
        pipe.mget(keys)
        values = pipe.execute()[-1]
        total_ok = sum(int(v or 0) for v in values[0::2])
        total_fail = sum(int(v or 0) for v in values[1::2])
        total = total_ok + total_fail
        if not fails or total < self.policy.min_volume or total_fail / total < self.policy.threshold:
            return
        opened = self.client.set(f"{self.prefix}:open", "1", px=int(self.policy.cooldown * 1000), nx=True)
        self.state_read_at = -self.STATE_SECONDS  # read the state afresh: opened now, or by another worker
        if opened:
            self.client.delete(*keys)
            log.warning(
                "circuit breaker open for %.0fs: %d of %d recent attempts failed",
                self.policy.cooldown,
                total_fail,
                total,
            )

    def open_for(self) -> float:
        import redis

        current = time.monotonic()
        with self.lock:
            if current - self.state_read_at < self.STATE_SECONDS:
                return max(0.0, self.open_until - current)
            try:
                ttl = self.client.pttl(f"{self.prefix}:open")
            except redis.RedisError:
                return 0.0  # fail open: an unreachable Redis says nothing about the SMTP server
            self.state_read_at = current
            self.open_until = current + (ttl / 1000 if ttl and ttl > 0 else 0.0)
            return max(0.0, self.open_until - current)


class NeverOpen:
    """The breaker for callers that were given none: counts nothing, never opens."""

    def record(self, ok: bool) -> None:
        pass

    def open_for(self) -> float:
        return 0.0
