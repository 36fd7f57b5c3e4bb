"""``nurture doctor``: is this installation able to send? One line per check, ``ok``, ``warn`` or ``FAIL``.

Nothing here looks anything up in DNS (published DKIM, SPF or DMARC records are for the operator to check
with their DNS host; docs/operating.md lists them): the checks are settings, the database and its schema,
the broker, the SMTP relay (connect, EHLO, STARTTLS when configured, login) and the DKIM key.
``/readyz`` uses :func:`database_problem` and :func:`broker_problem` from here too.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from nurture.core.config import Environment, Settings

if TYPE_CHECKING:
    from nurture.mail.transports import SmtpTarget

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn or FAIL
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<10}  {self.detail}"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- shared with /readyz ----------------------------------------------------------------------------------


def database_problem() -> str | None:
    """None when the database answers a query, else what went wrong (one line)."""
    from sqlalchemy import text

    from nurture.core.db import get_engine

    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return _short(exc)
    return None


def broker_problem(settings: Settings, timeout: float = 2.0) -> str | None:
    """None when the Celery broker is usable: Redis answers PING, the embedded broker folder is writable, or
    (other kombu transports) a connection opens; else what went wrong (one line)."""
    if settings.embedded_broker:
        root = (settings.var_dir / "broker").resolve()
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".ready-"):
                pass
        except OSError as exc:
            return f"broker folder {root} is not writable: {exc.strerror or exc}"
        queue = root / "queue"
        if queue.exists() and not os.access(queue, os.W_OK):
            return f"broker folder {queue} is not writable"
        return None
    scheme = urlsplit(settings.broker.broker_url).scheme
    if scheme in {"redis", "rediss"}:
        import redis

        client = redis.Redis.from_url(
            settings.broker.broker_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        try:
            client.ping()
        except Exception as exc:
            return _short(exc)
        finally:
            client.close()
        return None
    from kombu import Connection

    try:
        with Connection(settings.broker.broker_url, connect_timeout=timeout) as connection:
            connection.connect()
    except Exception as exc:
        return _short(exc)
    return None


def broker_label(settings: Settings) -> str:
    if settings.embedded_broker:
        return f"embedded folder {(settings.var_dir / 'broker').resolve()}"
    parts = urlsplit(settings.broker.broker_url)  # without the password
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


# --- the checks -------------------------------------------------------------------------------------------


def check_settings(settings: Settings) -> Check:
    detail = f"env={settings.env.value}, from={settings.mail.envelope_from}, base_url={settings.web.base_url}"
    if settings.env is Environment.production and not settings.web.metrics_token:
        return Check("settings", WARN, detail + "; /metrics answers 403 until NURTURE_METRICS_TOKEN is set")
    return Check("settings", OK, detail)


def check_database(settings: Settings) -> list[Check]:
    from sqlalchemy.engine import make_url

    from nurture.core.db import get_engine, normalise_url
    from nurture.core.migrate import current_revision, head_revision

    where = make_url(normalise_url(settings.resolved_database_url)).render_as_string(hide_password=True)
    problem = database_problem()
    if problem:
        return [
            Check("database", FAIL, f"{where}: {problem}"),
            Check("migrations", FAIL, "not checked: the database is unreachable"),
        ]
    database = Check("database", OK, f"{where} answers")
    try:
        current, head = current_revision(get_engine()), head_revision()
    except Exception as exc:
        return [database, Check("migrations", FAIL, _short(exc))]
    if current != head:
        detail = f"schema at {current or 'nothing'}, code expects {head}: run `nurture db upgrade`"
        return [database, Check("migrations", FAIL, detail)]
    return [database, Check("migrations", OK, f"schema at head ({head})")]


def check_broker(settings: Settings) -> Check:
    problem = broker_problem(settings)
    if problem:
        return Check("broker", FAIL, f"{broker_label(settings)}: {problem}")
    how = "writable" if settings.embedded_broker else "answers"
    return Check("broker", OK, f"{broker_label(settings)} {how}")


def check_smtp(settings: Settings, timeout: float = 10.0) -> Check:
    url = settings.resolved_smtp_url
    scheme = urlsplit(url).scheme
    production = settings.env is Environment.production
    if scheme == "maildir":
        parts = urlsplit(url)
        folder = Path(unquote(parts.netloc + parts.path))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writable = os.access(folder, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            return Check("smtp", FAIL, f"development mailbox {folder} is not writable")
        status = FAIL if production else OK
        return Check("smtp", status, f"development mailbox {folder}: mail stays on this machine")
    if scheme == "memory":
        return Check("smtp", FAIL if production else WARN, "memory://: mail is kept in the process (tests)")
    from nurture.mail.transports import SmtpTarget

    try:
        target = SmtpTarget.from_url(url, timeout=min(settings.mail.smtp_timeout, timeout))
    except ValueError as exc:
        return Check("smtp", FAIL, str(exc))
    return _probe_smtp(target, settings, production)


def _probe_smtp(t: SmtpTarget, settings: Settings, production: bool) -> Check:
    where = f"{t.host}:{t.port}"
    context = ssl.create_default_context(cafile=getattr(t, "cafile", None))
    steps = []
    try:
        if t.implicit_tls:
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                t.host,
                t.port,
                local_hostname=settings.mail.from_domain,
                timeout=t.timeout,
                context=context,
            )
        else:
            conn = smtplib.SMTP(t.host, t.port, local_hostname=settings.mail.from_domain, timeout=t.timeout)
    except (OSError, smtplib.SMTPException) as exc:
        return Check("smtp", FAIL, f"{where}: cannot connect: {_short(exc)}")
    try:
        code, _ = conn.ehlo()
        if code != 250:
            return Check("smtp", FAIL, f"{where}: EHLO answered {code}")
        steps.append("EHLO ok")
        if t.starttls:
            if not conn.has_extn("starttls"):
                return Check("smtp", FAIL, f"{where}: STARTTLS configured but the server does not offer it")
            conn.starttls(context=context)
            conn.ehlo()
        tls = isinstance(conn.sock, ssl.SSLSocket)
        if isinstance(conn.sock, ssl.SSLSocket):
            how = "STARTTLS" if t.starttls else "implicit TLS"
            steps.append(f"{how} {conn.sock.version()} {(conn.sock.cipher() or ('',))[0]}".strip())
        else:
            steps.append("no TLS")
        if t.username:
            conn.login(t.username, t.password or "")
            steps.append(f"login as {t.username} ok")
    except smtplib.SMTPAuthenticationError as exc:
        return Check("smtp", FAIL, f"{where}: {', '.join(steps)}; login refused ({exc.smtp_code})")
    except (OSError, smtplib.SMTPException) as exc:
        done = f"{', '.join(steps)}; " if steps else ""
        return Check("smtp", FAIL, f"{where}: {done}{_short(exc)}")
    finally:
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            conn.close()
    detail = f"{where}: {', '.join(steps)}"
    local = t.host in {"127.0.0.1", "localhost", "::1"}
    if not tls and production and not local:
        return Check("smtp", WARN, detail + ": mail and credentials cross the network unencrypted")
    return Check("smtp", OK, detail)


def check_dkim(settings: Settings) -> Check:
    if not settings.mail.dkim_key:
        status = WARN if settings.env is Environment.production else OK
        return Check("dkim", status, "NURTURE_DKIM_KEY not set: mail is not DKIM-signed by nurture")
    from dkim.crypto import parse_pem_private_key

    from nurture.core.dkim_keys import DkimKeyError
    from nurture.mail.dkim import DkimSigner

    try:
        signer = DkimSigner.from_settings(settings)
    except DkimKeyError as exc:
        return Check("dkim", FAIL, str(exc))
    bits = int(parse_pem_private_key(signer.private_key)["modulus"]).bit_length()
    probe = (
        f"From: {settings.mail.from_address}\r\nTo: doctor@{settings.mail.from_domain}\r\n"
        "Subject: nurture doctor\r\n"
        f"Date: {datetime.now(UTC):%a, %d %b %Y %H:%M:%S +0000}\r\n"
        f"Message-ID: <doctor@{settings.mail.from_domain}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nprobe\r\n"
    ).encode()
    try:
        verified = signer.verify(signer.sign(probe))
    except Exception as exc:
        return Check("dkim", FAIL, f"signing failed: {_short(exc)}")
    if not verified:
        return Check("dkim", FAIL, "a signed probe does not verify against the key's own public half")
    sender_domain = settings.mail.from_domain
    if sender_domain != signer.domain and not sender_domain.endswith("." + signer.domain):
        return Check(
            "dkim",
            FAIL,
            f"d={signer.domain} does not align with the From domain {sender_domain}: DMARC would fail",
        )
    detail = (
        f"{bits}-bit RSA key signs and verifies; d={signer.domain} s={signer.selector}; "
        f"TXT record at {signer.dns_name} (`nurture dkim record` prints it)"
    )
    if Path(settings.mail.dkim_key).stat().st_mode & 0o077:
        return Check("dkim", WARN, detail + f"; {settings.mail.dkim_key} is readable by others: chmod 600 it")
    return Check(
        "dkim", WARN if bits < 2048 else OK, detail + ("; 2048 bits recommended" if bits < 2048 else "")
    )


def run_checks(settings: Settings) -> list[Check]:
    return [
        check_settings(settings),
        *check_database(settings),
        check_broker(settings),
        check_smtp(settings),
        check_dkim(settings),
    ]
