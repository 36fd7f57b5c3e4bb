"""Typed settings read from ``NURTURE_*`` environment variables.

Every setting has a development default so ``make run`` works on a fresh machine; outside development
the defaults that would be unsafe (secret key, postal address, base URL) are refused at start-up with a
message that names the variable to set.
"""

from __future__ import annotations

from email.utils import parseaddr
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "changethis", "secret", DEV_SECRET_KEY}
DEV_POSTAL_ADDRESS = "100 Example Street, Springfield, IL 62701, USA"


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class ConfigError(RuntimeError):
    """Settings that cannot be used; the message says which variable to fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NURTURE_", extra="ignore", frozen=True)

    env: Environment = Environment.development
    var_dir: Path = Path("var")

    database_url: str = ""  # empty: SQLite file under var_dir
    broker_url: str = ""  # empty: embedded filesystem broker under var_dir, no server needed
    smtp_url: str = ""  # empty: development Maildir under var_dir/mail

    base_url: str = "http://127.0.0.1:8000"
    secret_key: str = DEV_SECRET_KEY
    from_address: str = Field(default="Example Counseling Centre <hello@example.com>", alias="NURTURE_FROM")
    reply_to: str = ""
    unsubscribe_mailto: str = ""  # empty: unsubscribe@<from domain>

    org_name: str = "Example Counseling Centre"
    postal_address: str = DEV_POSTAL_ADDRESS
    contact_url: str = "https://example.com/contact"
    logo_url: str = ""
    brand_color: str = "#0b5394"

    sequences_dir: Path = PACKAGE_DIR / "sequences"
    templates_dir: Path = PROJECT_ROOT / "templates"
    default_sequence: str = "ketamine-therapy"

    dispatch_interval: float = Field(default=5.0, gt=0, le=3600)
    lease_seconds: int = Field(default=300, ge=5, le=86_400)
    claim_limit: int = Field(default=2000, ge=1, le=100_000)  # rows claimed per dispatch tick
    batch_size: int = Field(default=50, ge=1, le=1000)  # deliveries carried by one Celery task
    max_attempts: int = Field(default=8, ge=1, le=50)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_cap_seconds: float = Field(default=3600.0, gt=0)
    ambiguous_policy: Literal["hold", "resend"] = "hold"
    smtp_timeout: float = Field(default=30.0, gt=0)

    @field_validator("base_url", "contact_url")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("from_address")
    @classmethod
    def _from_has_address(cls, value: str) -> str:
        address = parseaddr(value)[1]
        if "@" not in address or any(c in value for c in "\r\n"):
            raise ValueError(f"NURTURE_FROM must look like 'Name <addr@domain>', got {value!r}")
        return value

    @field_validator("brand_color")
    @classmethod
    def _hex_color(cls, value: str) -> str:
        body = value.removeprefix("#")
        if len(body) not in {3, 6} or any(c not in "0123456789abcdefABCDEF" for c in body):
            raise ValueError(f"must be a hex colour like #0b5394, got {value!r}")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults_outside_development(self) -> Settings:
        if self.env is Environment.development:
            return self
        problems = []
        if self.secret_key.strip().lower() in PLACEHOLDER_SECRETS or len(self.secret_key) < 32:
            problems.append("NURTURE_SECRET_KEY must be set to a random value of at least 32 characters")
        if self.env is Environment.production:
            if self.postal_address == DEV_POSTAL_ADDRESS:
                problems.append("NURTURE_POSTAL_ADDRESS must be your real postal address (CAN-SPAM)")
            if not self.base_url.startswith("https://"):
                problems.append("NURTURE_BASE_URL must be an https:// URL in production")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # Derived values: computed here so every process agrees on them.

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.var_dir / 'nurture.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def resolved_smtp_url(self) -> str:
        return self.smtp_url or f"maildir://{(self.var_dir / 'mail').resolve()}"

    @property
    def envelope_from(self) -> str:
        """The bare address of NURTURE_FROM: the SMTP MAIL FROM, where bounces return."""
        return parseaddr(self.from_address)[1]

    @property
    def from_domain(self) -> str:
        return self.envelope_from.rsplit("@", 1)[-1].lower()

    @property
    def resolved_unsubscribe_mailto(self) -> str:
        return self.unsubscribe_mailto or f"unsubscribe@{self.from_domain}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the environment."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        ]
        raise ConfigError("invalid nurture settings:\n" + "\n".join(lines)) from None
