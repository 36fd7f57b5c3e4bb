"""Rate limit and circuit breaker, shared through real Redis, and in-process on the embedded defaults."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import redis

from nurture.core import clock
from nurture.core.config import get_settings, parse_rate
from nurture.delivery.circuit_breaker import BreakerPolicy, LocalBreaker, RedisBreaker
from nurture.delivery.send_rate import LocalBucket, RedisBucket, Unlimited
from nurture.delivery.transport_guards import circuit_breaker, rate_limiter
from tests.support.helpers import dispatch_inline, make_sender, statuses, subscribe, sync_sequences
from tests.support.processes import SmtpScript, SmtpServer


@pytest.mark.parametrize(
    ("text", "per_second"), [("0", None), ("", None), ("20/s", 20.0), ("600/m", 10.0), ("3600 / hour", 1.0)]
)
def test_parse_rate(text: str, per_second: float | None) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["fast", "-1/s", "10/fortnight", "0/s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        parse_rate(text)


def test_guards_follow_the_broker(set_env, redis_url) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(rate_limiter(get_settings()), Unlimited)
    set_env(smtp_rate="5/s")
    assert isinstance(rate_limiter(get_settings()), LocalBucket)
    assert isinstance(circuit_breaker(get_settings()), LocalBreaker)
    set_env(broker_url=redis_url)
    assert isinstance(rate_limiter(get_settings()), RedisBucket)
    assert isinstance(circuit_breaker(get_settings()), RedisBreaker)


def _take_all(bucket, count: int, threads: int) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    workers = [
        threading.Thread(target=lambda: [bucket.acquire() for _ in range(count // threads)])
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.monotonic() - started


def test_a_redis_bucket_is_shared_by_every_worker(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    # Two "workers" with their own bucket objects on one key: together they stay under 20/s.
    buckets = [RedisBucket(client, "nurture:rate:test", 20.0), RedisBucket(client, "nurture:rate:test", 20.0)]
    started = time.monotonic()
    threads = [threading.Thread(target=lambda b=b: [b.acquire() for _ in range(30)]) for b in buckets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 60 tokens at 20/s with a burst of 20 need at least (60 - 20) / 20 = 2 s, whatever the thread count.
    assert time.monotonic() - started >= 1.8


def test_a_local_bucket_limits_its_process() -> None:
    assert _take_all(LocalBucket(50.0), 100, threads=4) >= 0.9  # (100 - 50) / 50 = 1 s at the least


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_the_breaker_opens_on_failures_and_sending_stops_without_using_attempts(
    kind, factory, one_step, set_env, redis_url
) -> None:  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    policy = BreakerPolicy(threshold=0.5, min_volume=5, window=60, cooldown=30)
    if kind == "local":
        breaker = LocalBreaker(policy)
    else:
        breaker = RedisBreaker(redis.Redis.from_url(redis_url), "nurture:breaker:test", policy)
    script = SmtpScript(data_replies=["451 4.7.0 slow down"] * 100)
    with SmtpServer(script) as smtp, clock.frozen(datetime(2026, 3, 2, 15, tzinfo=UTC)):
        set_env(smtp_url=smtp.url)
        for n in range(20):
            subscribe(factory, f"r{n}@example.com", "one-step")
        sender = make_sender(factory)
        sender.breaker = breaker
        outcomes = dispatch_inline(factory, sender)
        assert outcomes == {"retry": 5, "deferred": 15}
        assert breaker.open_for() > 25
        assert smtp.handler.data_attempts == 5
        assert statuses(factory).count("pending") == 20  # nothing failed, nothing lost
        assert dispatch_inline(factory, sender).total() == 0  # the deferred rows wait out the cool-down


def _commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_the_shared_breaker_keeps_redis_off_each_emails_path_and_still_opens_at_once(redis_url) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_url)
    policy = BreakerPolicy(threshold=0.5, min_volume=10, window=60, cooldown=30)
    breaker = RedisBreaker(client, "nurture:breaker:roundtrips", policy)
    other_worker = RedisBreaker(redis.Redis.from_url(redis_url), "nurture:breaker:roundtrips", policy)
    before = _commands_processed(client)
    for _ in range(200):  # 200 emails sent fine, each asking first whether the breaker is open
        assert breaker.open_for() == 0.0
        breaker.record(ok=True)
    # Per email that was three round trips (PTTL, TIME, a pipeline); now a handful for all 200 (the
    # other worker on the same Redis adds nothing here, and INFO itself counts as one).
    assert _commands_processed(client) - before < 40
    # The successes were counted in Redis all the same (it takes 200 failures to reach half of the attempts),
    # and the failure that crosses the threshold opens the breaker at once, not a second later.
    failures = 0
    while breaker.open_for() == 0.0 and failures < 300:
        breaker.record(ok=False)
        failures += 1
    assert failures == 200
    assert breaker.open_for() > 25
    assert other_worker.open_for() > 25  # shared: the other worker sees it on its next read
