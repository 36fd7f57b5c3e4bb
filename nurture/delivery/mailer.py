"""What everything that sends email holds: the settings, the database, the transport, the templates, and
the provider account's rate limit and circuit breaker.

Sequence email (:class:`nurture.delivery.sender.Sender`) and confirmations
(:class:`nurture.delivery.confirmations.Outbox`) go through the same provider account, so a worker gives
both the same limiter and breaker: a burst of signups must not push the account past its limit either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nurture.delivery.circuit_breaker import Breaker, NeverOpen
from nurture.delivery.send_rate import RateLimiter, Unlimited

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from nurture.core.config import Settings
    from nurture.mail.templates import EmailTemplates
    from nurture.mail.transports import Transport


class Mailer:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        transport: Transport,
        templates: EmailTemplates,
        *,
        limiter: RateLimiter | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.transport = transport
        self.templates = templates
        self.limiter = limiter or Unlimited()
        self.breaker = breaker or NeverOpen()
