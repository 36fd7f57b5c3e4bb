"""Which URLs may receive webhooks, checked when an endpoint is saved and again at every connection.

Outside development and test, only https to public addresses: a webhook must not become a way to make this
server call its own admin ports, the cloud metadata service or the office network (SSRF). The host is
resolved when the endpoint is saved (a clear error for the person typing it) and again by the HTTP client
right before it connects, to the very address it then uses, so a DNS answer that changes after the check
(DNS rebinding) meets the same rule.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore2
import httpx2

from nurture.core.config import Environment, Settings

MAX_URL_LENGTH = 2000
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(ValueError):
    """The URL may not receive webhooks; the message says why, fit to show to staff."""


def relaxed(settings: Settings) -> bool:
    """Development and test allow http and loopback (a receiver on the same machine); production never."""
    return settings.env in {Environment.development, Environment.test}


# NAT64's well-known prefix (RFC 6052): the translator forwards to the IPv4 address in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IPv4-compatible addresses (RFC 4291, deprecated): ::a.b.c.d, except :: and ::1 themselves.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The transition mechanism and the IPv4 addresses an IPv6 address leads to, or None: traffic to a 6to4,
    Teredo, NAT64 or IPv4-compatible address ends up at the IPv4 host it carries."""
    if ip.sixtofour is not None:
        return "6to4", [ip.sixtofour]
    if ip.teredo is not None:
        return "Teredo", list(ip.teredo)  # the relay server and the client behind it
    if ip in _NAT64:
        return "NAT64", [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return "IPv4-compatible", [ipaddress.IPv4Address(int(ip))]
    return None


def address_problem(ip: IPAddress, *, allow_loopback: bool) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # the IPv4 address itself, in IPv6 notation
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)) is not None:
        # Each embedded IPv4 address meets the IPv4 rule; a 6to4 address is then as public as its IPv4
        # address (its IPv6 properties vary between Python versions), the other forms must pass as IPv6 too.
        mechanism, targets = embedded
        for target in targets:
            problem = _own_problem(target, allow_loopback=allow_loopback)
            if problem:
                return f"{problem} ({target}, via {mechanism})"
        if mechanism == "6to4":
            return None
    return _own_problem(ip, allow_loopback=allow_loopback)


def _own_problem(ip: IPAddress, *, allow_loopback: bool) -> str | None:
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    for test, name in (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    ):
        if test:
            return name
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"cannot resolve {host}: {exc}") from None
    # Drop any IPv6 scope ("%eth0") before parsing.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def checked_addresses(host: str, port: int, *, allow_loopback: bool) -> list[IPAddress]:
    """Every address ``host`` resolves to, or UnsafeUrl if any of them is off limits (all must pass: a
    name with one public and one private address could otherwise reach the private one)."""
    addresses = resolve(host, port)
    if not addresses:
        raise UnsafeUrl(f"{host} has no address")
    for ip in addresses:
        problem = address_problem(ip, allow_loopback=allow_loopback)
        if problem:
            raise UnsafeUrl(f"{host} resolves to {ip}, {problem}")
    return addresses


def validate_url(raw: str, settings: Settings, *, resolve_host: bool = True) -> str:
    """The URL, stripped, if webhooks may go there; else UnsafeUrl with the reason."""
    url = (raw or "").strip()
    if not url:
        raise UnsafeUrl("give the endpoint URL")
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UnsafeUrl(f"the URL must be at most {MAX_URL_LENGTH} characters with no spaces")
    parts = urlsplit(url)
    allowed = {"http", "https"} if relaxed(settings) else {"https"}
    if parts.scheme.lower() not in allowed:
        raise UnsafeUrl("the URL must start with https://" + (" or http://" if relaxed(settings) else ""))
    if "@" in parts.netloc:
        raise UnsafeUrl("the URL must not contain a user name or password; the signature authenticates us")
    if parts.fragment:
        raise UnsafeUrl("the URL must not have a #fragment")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise UnsafeUrl("the URL has an invalid port") from None
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    if resolve_host:
        checked_addresses(host, port, allow_loopback=relaxed(settings))
    return url


class GuardedBackend(httpcore2.SyncBackend):
    """Resolves the host itself, refuses off-limits addresses, and connects to the address it checked."""

    def __init__(self, *, allow_loopback: bool) -> None:
        self.allow_loopback = allow_loopback

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[tuple[int, int, int | bytes | None]] | None = None,  # type: ignore[override]
    ) -> httpcore2.NetworkStream:
        addresses = checked_addresses(host, port, allow_loopback=self.allow_loopback)
        last: Exception | None = None
        for ip in addresses:
            try:
                # TLS still verifies the certificate for the host name: httpcore passes the URL's host as
                # server_hostname, whatever address the socket connected to.
                return super().connect_tcp(str(ip), port, timeout, local_address, socket_options)  # type: ignore[arg-type]
            except httpcore2.ConnectError as exc:
                last = exc
        assert last is not None
        raise last


def guarded_client(settings: Settings) -> httpx2.Client:
    """An HTTP client for webhooks: no redirects, no proxies from the environment, short timeouts, and
    the address rule enforced at connect time."""
    transport = httpx2.HTTPTransport(trust_env=False)
    # httpx has no public switch for the network backend; its pool is rebuilt with the same TLS context.
    ssl_context = transport._pool._ssl_context  # type: ignore[attr-defined]
    transport._pool = httpcore2.ConnectionPool(  # type: ignore[attr-defined]
        ssl_context=ssl_context,
        max_connections=20,
        network_backend=GuardedBackend(allow_loopback=relaxed(settings)),
    )
    return httpx2.Client(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        timeout=httpx2.Timeout(
            settings.webhooks.webhook_timeout, connect=settings.webhooks.webhook_connect_timeout
        ),
    )
