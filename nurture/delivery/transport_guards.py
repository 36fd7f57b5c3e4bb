"""Build the rate limiter and circuit breaker that protect one SMTP transport, from the settings."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

from nurture.core.config import Settings, parse_rate
from nurture.delivery.circuit_breaker import Breaker, BreakerPolicy, LocalBreaker, RedisBreaker
from nurture.delivery.send_rate import LocalBucket, RateLimiter, RedisBucket, Unlimited


@lru_cache(maxsize=4)
def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def _shared_redis(settings: Settings) -> Any | None:
    """Workers share state through the broker's Redis; the embedded broker has no Redis, and one machine."""
    url = settings.broker.broker_url
    return _redis(url) if url.startswith(("redis://", "rediss://")) else None


def _transport_key(settings: Settings) -> str:
    # Limits belong to the provider account, so workers sending through the same SMTP URL share them.
    return hashlib.sha256(settings.resolved_smtp_url.encode()).hexdigest()[:12]


def rate_limiter(settings: Settings) -> RateLimiter:
    per_second = parse_rate(settings.mail.smtp_rate)
    if per_second is None:
        return Unlimited()
    client = _shared_redis(settings)
    if client is None:
        return LocalBucket(per_second)
    return RedisBucket(client, f"nurture:rate:{_transport_key(settings)}", per_second)


def circuit_breaker(settings: Settings) -> Breaker:
    policy = BreakerPolicy(
        threshold=settings.mail.breaker_threshold,
        min_volume=settings.mail.breaker_min_volume,
        window=settings.mail.breaker_window_seconds,
        cooldown=settings.mail.breaker_cooldown_seconds,
    )
    client = _shared_redis(settings)
    if client is None:
        return LocalBreaker(policy)
    return RedisBreaker(client, f"nurture:breaker:{_transport_key(settings)}", policy)
