"""Typed settings read from ``NURTURE_*`` environment variables.

Every setting has a development default so ``make run`` works on a fresh machine, but development is
never assumed: only ``NURTURE_ENV=development`` (which ``make run`` sets) accepts the development secret key
and sends staff cookies without ``Secure``. An unset ``NURTURE_ENV`` means production, where the defaults
that would be unsafe (secret key, postal address, base URL) are refused at start-up with a message that
names the variable to set.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from nurture.core.clock import UnknownZone, zone
from nurture.core.dkim_keys import DkimKeyError, load_private_key

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parents[1]

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "changethis", "secret", DEV_SECRET_KEY}
DEV_POSTAL_ADDRESS = "100 Example Street, Springfield, IL 62701, USA"
_DNS_NAME = re.compile(r"(?i)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str) -> float | None:
    """Messages per second from "20/s", "600/m" or "10000/h"; None for "" or "0" (unlimited)."""
    if text.strip() in {"", "0"}:
        return None
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"rate {text!r} must look like 20/s, 600/m or 10000/h (0 for unlimited)")
    return float(match.group(1)) / _UNIT_SECONDS[match.group(2).lower()]


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class ConfigError(RuntimeError):
    """Settings that cannot be used; the message says which variable to fix."""


class _Section(BaseSettings):
    """A group of settings, read from the same ``NURTURE_*`` variables as ever (the section is not in the
    name: ``NURTURE_SMTP_URL`` is ``settings.mail.smtp_url``)."""

    model_config = SettingsConfigDict(env_prefix="NURTURE_", extra="ignore", frozen=True)


def _absolute_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
    return value.rstrip("/")


class DatabaseSettings(_Section):
    """The database and each process's connection pool."""

    database_url: str = ""  # empty: SQLite file under var_dir
    # Connections per process (each web or worker process has its own pool): size, extra under bursts, and
    # how long a request waits for one before answering 503. Keep processes x (size + overflow) below
    # PostgreSQL's max_connections (100 by default), or a burst turns into "too many clients" errors.
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    db_pool_timeout: float = Field(default=10.0, gt=0, le=300)


class BrokerSettings(_Section):
    """The Celery broker, and how dispatch hands due work to workers."""

    broker_url: str = ""  # empty: embedded filesystem broker under var_dir, no server needed
    # Redis redelivers an unacknowledged task after this long; harmless here (tasks re-check every row) and
    # never the schedule itself, which lives in the database.
    broker_visibility_timeout: int = Field(default=3600, ge=1)
    dispatch_interval: float = Field(default=5.0, gt=0, le=3600)
    lease_seconds: int = Field(default=300, ge=5, le=86_400)
    # Rows a dispatch tick may have waiting for workers (nurture.delivery.dispatch.claim_room). It does not
    # cap throughput: a tick that fills it has the worker that finishes its middle batch run the next tick
    # at once (dispatch_once's refill), so a backlog drains as fast as the workers send. Two ticks at the
    # same moment (beat's and a refill) may each claim the room they saw: at most twice this many wait.
    claim_limit: int = Field(default=10_000, ge=1, le=100_000)
    # Deliveries carried by one Celery task: 200 rather than 50 cut the worker's CPU per email by a fifth
    # (Celery's per-task cost: receiving, acking, the batch's reads; bench/analysis.md).
    batch_size: int = Field(default=200, ge=1, le=1000)


class MailSettings(_Section):
    """Sending: the SMTP server, the sender's addresses, DKIM, retries, the rate limit and breaker,
    the crash policy and the frequency cap."""

    smtp_url: str = ""  # empty: development Maildir under var_dir/mail
    from_address: str = Field(default="Example Counseling Centre <hello@example.com>", alias="NURTURE_FROM")
    reply_to: str = ""
    unsubscribe_mailto: str = ""  # empty: unsubscribe@<from domain>
    # Operations (docs/operating.md).
    dkim_key: str = ""  # path of a PEM RSA private key; empty: mail is not signed
    dkim_selector: str = "nurture"
    dkim_domain: str = ""  # empty: the domain of NURTURE_FROM (aligned for DMARC)
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_rate: str = "0"  # sending limit shared by all workers: "20/s", "600/m", "10000/h"; "0" = none
    # Group commits (nurture.delivery.sender): one transaction marks up to this many emails "sending" before
    # they are handed over one by one, each with its own receipt, so a worker killed mid-group still leaves
    # only the email on the wire unknown (docs/reliability.md, "Crashes"). 100 rather than 20: a group's
    # transaction has a fixed cost, and groups of up to 100 sent a third more per second on two cores
    # (bench/analysis.md); the window below, not this cap, is what bounds an unsubscribe's wait...
    send_group_max: int = Field(default=100, ge=1, le=1000)
    # ...and a group is only as large as the SMTP server accepts in this long (measured per process), which
    # bounds how long after an unsubscribe commits an email already marked "sending" may still go out.
    send_group_window_ms: float = Field(default=50.0, gt=0, le=10_000)
    max_attempts: int = Field(default=8, ge=1, le=50)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_cap_seconds: float = Field(default=3600.0, gt=0)
    # The one email per crash (or dropped connection) whose fate is unknown: sent again with its Message-ID
    # (receivers fold repeats), or "hold" it for a person to decide (docs/reliability.md).
    ambiguous_policy: Literal["hold", "resend"] = "resend"
    breaker_threshold: float = Field(default=0.5, gt=0, le=1)  # failure ratio that stops sending...
    breaker_min_volume: int = Field(default=20, ge=1)  # ...once this many attempts are in the window
    breaker_window_seconds: float = Field(default=60.0, ge=10)
    breaker_cooldown_seconds: float = Field(default=60.0, gt=0)
    soft_bounce_limit: int = Field(default=3, ge=1, le=100)  # soft bounces before an address is suppressed
    # No two emails from different sequences to one person less than this many hours apart; the later one
    # moves (nurture.delivery.frequency_cap). 0: off.
    frequency_cap_hours: float = Field(default=12.0, ge=0, le=24 * 30)

    @field_validator("from_address")
    @classmethod
    def _from_has_address(cls, value: str) -> str:
        address = parseaddr(value)[1]
        if "@" not in address or any(c in value for c in "\r\n"):
            raise ValueError(f"NURTURE_FROM must look like 'Name <addr@domain>', got {value!r}")
        return value

    @field_validator("smtp_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("dkim_selector", "dkim_domain")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if value and not _DNS_NAME.fullmatch(value.rstrip(".")):
            raise ValueError(f"must be a DNS name (letters, digits, hyphens, dots), got {value!r}")
        return value

    @model_validator(mode="after")
    def _usable_dkim_key(self) -> MailSettings:
        if self.dkim_key:
            try:
                load_private_key(Path(self.dkim_key))
            except DkimKeyError as exc:
                raise ValueError(f"NURTURE_DKIM_KEY: {exc}") from None
        return self

    @property
    def envelope_from(self) -> str:
        """The bare address of NURTURE_FROM: the SMTP MAIL FROM, where bounces return."""
        return parsed_address(self.from_address)[1]

    @property
    def from_domain(self) -> str:
        return self.envelope_from.rsplit("@", 1)[-1].lower()

    @property
    def resolved_unsubscribe_mailto(self) -> str:
        return self.unsubscribe_mailto or f"unsubscribe@{self.from_domain}"

    @property
    def resolved_dkim_domain(self) -> str:
        return (self.dkim_domain or self.from_domain).lower().rstrip(".")


class WebSettings(_Section):
    """The web app: its public URL, tokens for /metrics and bounces, staff sessions, the dashboard."""

    base_url: str = "http://127.0.0.1:8000"
    metrics_token: str = ""  # when set, GET /metrics wants "Authorization: Bearer <token>"
    bounce_token: str = ""  # POST /api/v1/bounces wants it as a Bearer token; empty: endpoint off
    staff_session_seconds: int = Field(default=12 * 3600, ge=300, le=30 * 86_400)  # idle-free session life
    # The first-admin setup link (nurture.staff.first_admin) dies after this long, after one use, or once an
    # admin exists.
    setup_link_hours: int = Field(default=24, ge=1, le=24 * 30)
    # Staff work on more rows than this (an import, enrolling a list) runs as a job the browser follows with
    # a progress bar; smaller work answers on the spot (nurture.staff.jobs).
    background_rows: int = Field(default=5000, ge=1, le=10_000_000)
    # The staff dashboard's charts count days in this zone; its alerts fire above these rates over 7 days.
    report_timezone: str = "UTC"
    # Gmail and Yahoo require a spam complaint rate under 0.3% (and recommend 0.1%); hard bounces above ~2%
    # are the common sign of a stale list that mailbox providers act on.
    alert_complaint_rate: float = Field(default=0.003, gt=0, le=1)
    alert_bounce_rate: float = Field(default=0.02, gt=0, le=1)

    @field_validator("base_url")
    @classmethod
    def _absolute_base_url(cls, value: str) -> str:
        return _absolute_url(value)

    @field_validator("report_timezone")
    @classmethod
    def _report_zone(cls, value: str) -> str:
        try:
            return zone(value.strip()).key
        except UnknownZone as exc:
            raise ValueError(
                f"NURTURE_REPORT_TIMEZONE must be an IANA zone such as Europe/Berlin: {exc}"
            ) from None


class LimitsSettings(_Section):
    """Abuse limits and paces: signups, confirmations, clicks, logins, resuming, retention."""

    # Abuse limits on the signup form (docs/prospects.md explains the numbers).
    signup_ip_limit: int = Field(default=10, ge=1, le=100_000)  # signups per client IP (IPv6: per /64)...
    signup_ip_window_seconds: int = Field(default=3600, ge=1, le=7 * 86_400)  # ...per this many seconds
    confirm_daily_limit: int = Field(default=3, ge=1, le=100)  # confirmation emails per address per 24 h
    # A signup never confirmed is someone we may not mail and whose data we may not keep: deleted after this.
    unconfirmed_retention_days: int = Field(default=30, ge=1, le=3650)
    # Tracked-link clicks counted per client IP (IPv6: per /64) per window; over it /l/ still redirects but
    # records nothing (nurture.subscribers.clicks.record_hit). Generous: an office behind one address clicks
    # too.
    click_ip_limit: int = Field(default=100, ge=1, le=100_000)
    click_ip_window_seconds: int = Field(default=600, ge=1, le=86_400)
    # Staff side (docs/staff.md).
    login_account_limit: int = Field(default=5, ge=1, le=1000)  # failed logins per account...
    login_ip_limit: int = Field(default=20, ge=1, le=100_000)  # ...and per client IP...
    login_window_seconds: int = Field(default=900, ge=60, le=86_400)  # ...per this many seconds, then 429
    # Resume "send_due": emails that fell due during a pause go out at most this many per minute per sequence.
    resume_rate_per_minute: int = Field(default=60, ge=1, le=100_000)


class WebhookSettings(_Section):
    """Outbound webhooks (docs/webhooks.md)."""

    # Outbound webhooks (docs/webhooks.md).
    webhook_retry_schedule: str = "30,120,600,3600,21600,43200,86400"  # seconds before each retry (+-10%)
    webhook_disable_failures: int = Field(default=10, ge=1, le=10_000)  # consecutive failed attempts...
    webhook_disable_hours: float = Field(default=24.0, ge=0, le=24 * 90)  # ...spanning at least this long
    webhook_secret_grace_hours: float = Field(default=24.0, ge=0, le=24 * 30)  # old secret signs too
    webhook_gap_seconds: int = Field(default=300, ge=5, le=86_400)  # event-id gap settles after this
    webhook_connect_timeout: float = Field(default=3.0, gt=0, le=60)
    webhook_timeout: float = Field(default=10.0, gt=0, le=120)  # each read or write
    webhook_retention_days: int = Field(default=30, ge=1, le=3650)  # finished deliveries kept this long

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _retry_schedule(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"must be comma-separated seconds like 30,120,600, got {value!r}") from None
        if not delays or len(delays) > 30 or any(d <= 0 or d > 7 * 86_400 for d in delays):
            raise ValueError("must list 1 to 30 delays, each more than 0 and at most 604800 seconds")
        return value

    @property
    def webhook_retry_delays(self) -> list[float]:
        return [float(part) for part in self.webhook_retry_schedule.split(",") if part.strip()]


class _GeneralEnvironment(EnvSettingsSource):
    """The environment for the general settings. A section is read by its own class from its own variables,
    never from one variable named after it (``NURTURE_MAIL`` is nothing, and a stray one breaks nothing)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in SECTIONS:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Settings(BaseSettings):
    """Every setting: the general ones here, the rest in sections (``settings.mail.smtp_url``)."""

    model_config = SettingsConfigDict(env_prefix="NURTURE_", extra="ignore", frozen=True)

    # Unset: production. A deployment that forgot the variable must not run on the public development key.
    env: Environment = Environment.production
    var_dir: Path = Path("var")
    secret_key: str = DEV_SECRET_KEY
    # Earlier secret keys, comma-separated: still accepted when verifying links in mail already sent, never
    # used to sign (docs/operating.md, "Rotate the secret key").
    old_secret_keys: str = ""
    org_name: str = "Example Counseling Centre"
    postal_address: str = DEV_POSTAL_ADDRESS
    contact_url: str = "https://example.com/contact"
    logo_url: str = ""
    brand_color: str = "#0b5394"
    sequences_dir: Path = PACKAGE_DIR / "sequences"
    templates_dir: Path = PROJECT_ROOT / "templates"
    default_sequence: str = "ketamine-therapy"
    log_format: Literal["auto", "text", "json"] = "auto"  # auto: json in production, text elsewhere
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    mail: MailSettings = Field(default_factory=MailSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _GeneralEnvironment(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("contact_url")
    @classmethod
    def _absolute_contact_url(cls, value: str) -> str:
        return _absolute_url(value)

    @field_validator("brand_color")
    @classmethod
    def _hex_color(cls, value: str) -> str:
        body = value.removeprefix("#")
        if len(body) not in {3, 6} or any(c not in "0123456789abcdefABCDEF" for c in body):
            raise ValueError(f"must be a hex colour like #0b5394, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return value.upper()

    @model_validator(mode="after")
    def _refuse_unsafe_defaults_outside_development(self) -> Settings:
        if self.env is Environment.development:
            return self
        problems = []
        if self.secret_key.strip().lower() in PLACEHOLDER_SECRETS or len(self.secret_key) < 32:
            problems.append("NURTURE_SECRET_KEY must be set to a random value of at least 32 characters")
        old = [key.strip() for key in self.old_secret_keys.split(",") if key.strip()]
        if any(key.lower() in PLACEHOLDER_SECRETS for key in old):
            problems.append("NURTURE_OLD_SECRET_KEYS must not hold a placeholder or the development key")
        if self.env is Environment.production:
            if self.postal_address == DEV_POSTAL_ADDRESS:
                problems.append("NURTURE_POSTAL_ADDRESS must be your real postal address (CAN-SPAM)")
            if not self.web.base_url.startswith("https://"):
                problems.append("NURTURE_BASE_URL must be an https:// URL in production")
        if problems and "env" not in self.model_fields_set:
            # Name the likely cause: an operator who never chose production, or a developer without make run.
            problems.append(
                "NURTURE_ENV is unset, so production rules apply; NURTURE_ENV=development to try it out"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # Derived values that need more than one section: computed here so every process agrees on them.

    @property
    def resolved_database_url(self) -> str:
        return self.database.database_url or f"sqlite:///{(self.var_dir / 'nurture.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker.broker_url

    @property
    def resolved_smtp_url(self) -> str:
        return self.mail.smtp_url or f"maildir://{(self.var_dir / 'mail').resolve()}"

    @property
    def verification_secret_keys(self) -> list[str]:
        """Keys that verify tokens: oldest first, the current key last (itsdangerous signs with the last)."""
        old = [key.strip() for key in self.old_secret_keys.split(",") if key.strip()]
        return [*reversed(old), self.secret_key]

    @property
    def json_logs(self) -> bool:
        if self.log_format == "auto":
            return self.env is Environment.production
        return self.log_format == "json"


SECTIONS: dict[str, type[_Section]] = {
    "database": DatabaseSettings,
    "broker": BrokerSettings,
    "mail": MailSettings,
    "web": WebSettings,
    "limits": LimitsSettings,
    "webhooks": WebhookSettings,
}


def _problems(exc: ValidationError) -> list[str]:
    return [f"  {'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the environment.

    Each section is read on its own, so one message names every bad variable at once, in whichever section."""
    problems: list[str] = []
    sections: dict[str, _Section] = {}
    for name, section in SECTIONS.items():
        try:
            sections[name] = section()
        except ValidationError as exc:
            problems += _problems(exc)
            sections[name] = section.model_construct()  # its defaults, so the general checks still run
    try:
        settings = Settings(**sections)
    except ValidationError as exc:
        problems += _problems(exc)
    if problems:
        raise ConfigError("invalid nurture settings:\n" + "\n".join(problems))
    return settings


@lru_cache(maxsize=16)
def parsed_address(address: str) -> tuple[str, str]:
    """``(display name, address)`` of a configured address such as NURTURE_FROM. Cached: the sender needs
    the From address's parts several times per email, and parseaddr is slow."""
    return parseaddr(address)
