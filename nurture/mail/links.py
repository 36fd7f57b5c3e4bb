"""Tracked links: rewrite an email's links to ``/l/{token}`` and store what each token names.

Rewriting is one regular-expression pass over each rendered part (no HTML parsing, no re-inlining): every
``http(s)`` link in the HTML ``href`` attributes and in the text part becomes ``{base_url}/l/{token}``. The
token is an HMAC of the delivery and the URL with the secret key, so rendering the same email again (a resend
after an ambiguous send) yields the same tokens, and nobody without the key can make one up; the URL itself
is stored in a ``tracked_links`` row, never put in the link. Unsubscribe, preferences and ``mailto:`` links
are left alone, and so is any link the templates did not write themselves (subscriber data is data, never a
link to rewrite). ``data-goal="name"`` on an ``<a>`` marks a link whose click also reports the goal ``name``
(the attribute is removed from the email).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sqlalchemy import text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.config import Settings
from nurture.mail.templates import RenderedEmail
from nurture.models import TrackedLink

CLICK = "click"
OPEN = "open"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{22}$")
_ANCHOR = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*=\s*)(["'])(https?://.*?)\2""", re.IGNORECASE | re.DOTALL)
_GOAL_ATTR = re.compile(r"""\sdata-goal\s*=\s*(["'])([^"']*)\1""", re.IGNORECASE)
# In plain text a URL runs to the next space or bracket; trailing sentence punctuation is not part of it.
_TEXT_URL = re.compile(r"""https?://[^\s<>"']+""")
_TRAILING = ".,;:!?)]}"


@dataclass(frozen=True)
class LinkRow:
    token: str
    kind: str
    url: str | None
    goal: str | None


def link_token(secret: str, delivery_id: int, kind: str, url: str | None) -> str:
    digest = hmac.new(secret.encode(), f"{kind}:{delivery_id}:{url or ''}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


@dataclass
class LinkRewriter:
    """Rewrites one delivery's email; ``rows`` are the links to store before the email is sent."""

    settings: Settings
    delivery_id: int
    clicks: bool = True
    opens: bool = False
    rows: dict[str, LinkRow] = field(default_factory=dict)  # url (or "" for the pixel) -> row
    # What a link's token is, from its kind and URL: the delivery's HMAC, unless a caller writes the email
    # once for many deliveries and fills the tokens in later (nurture.mail.plans passes placeholders).
    token_for: Callable[[str, str | None], str] | None = None

    def __post_init__(self) -> None:
        base = self.settings.web.base_url.rstrip("/")
        self._base = base
        self._untracked = (f"{base}/unsubscribe/", f"{base}/preferences/", f"{base}/l/", f"{base}/o/")
        self._written: frozenset[str] | None = None

    def rewrite(self, rendered: RenderedEmail, written_by: tuple[RenderedEmail, ...] = ()) -> RenderedEmail:
        """Track the links of ``rendered`` that also stand in ``written_by``, renders of the same step with
        no subscriber data (every link when it is empty): a URL from the subscriber's own data (a "first
        name" of https://evil.example) is never tracked, so /l/ never redirects where a stranger chose."""
        self._written = links_written(*written_by) if written_by else None
        html_part, text_part = rendered.html, rendered.text
        if self.clicks:
            html_part = _ANCHOR.sub(self._anchor, html_part)
            text_part = _TEXT_URL.sub(self._text_url, text_part)
        if self.opens:
            html_part = self._add_pixel(html_part)
        return replace(rendered, html=html_part, text=text_part)

    def _token(self, kind: str, url: str | None) -> str:
        if self.token_for is not None:
            return self.token_for(kind, url)
        return link_token(self.settings.secret_key, self.delivery_id, kind, url)

    def _tracked(self, url: str, goal: str | None = None) -> str | None:
        if url.startswith(self._untracked) or (self._written is not None and url not in self._written):
            return None
        row = self.rows.get(url)
        if row is None:
            token = self._token(CLICK, url)
            row = self.rows[url] = LinkRow(token, CLICK, url, goal)
        elif goal and row.goal is None:
            row = self.rows[url] = replace(row, goal=goal)
        return f"{self._base}/l/{row.token}"

    def _anchor(self, match: re.Match[str]) -> str:
        tag = match.group(0)
        goal_match = _GOAL_ATTR.search(tag)
        goal = html.unescape(goal_match.group(2)).strip() if goal_match else None
        if goal_match:
            tag = tag[: goal_match.start()] + tag[goal_match.end() :]
        href = _HREF.search(tag)
        if href is None:
            return tag
        tracked = self._tracked(html.unescape(href.group(3)).strip(), goal or None)
        if tracked is None:
            return tag
        return tag[: href.start(3)] + tracked + tag[href.end(3) :]

    def _text_url(self, match: re.Match[str]) -> str:
        url = match.group(0)
        stripped = url.rstrip(_TRAILING)
        tracked = self._tracked(stripped)
        return url if tracked is None else tracked + url[len(stripped) :]

    def _add_pixel(self, html_part: str) -> str:
        token = self._token(OPEN, None)
        self.rows[""] = LinkRow(token, OPEN, None, None)
        pixel = (
            f'<img src="{self._base}/o/{token}" width="1" height="1" alt="" '
            'style="display:block; width:1px; height:1px; border:0;">'
        )
        position = html_part.lower().rfind("</body>")
        return html_part + pixel if position < 0 else html_part[:position] + pixel + html_part[position:]


@functools.lru_cache(maxsize=512)
def links_written(*samples: RenderedEmail) -> frozenset[str]:
    """Every http(s) link in renders of a step made with no subscriber data (``mail.context``): the links
    the templates and settings write. Cached: the samples are themselves cached renders."""
    found: set[str] = set()
    for sample in samples:
        for tag in _ANCHOR.findall(sample.html):
            href = _HREF.search(tag)
            if href is not None:
                found.add(html.unescape(href.group(3)).strip())
        found.update(url.rstrip(_TRAILING) for url in _TEXT_URL.findall(sample.text))
    return frozenset(found)


def store_links(session: Session, delivery_id: int, rows: list[LinkRow]) -> None:
    """Insert the delivery's link rows; rows stored by an earlier render of the same email are kept."""
    store_links_of(session, {delivery_id: rows})


# On PostgreSQL the links of a group are one statement built once, the columns as arrays: a multi-row
# INSERT built for each group cost the sender more to compile than the database to run.
_LINK_COLUMNS = ("token", "delivery_id", "kind", "url", "goal")
_STORE_LINKS_PG = text(
    "INSERT INTO tracked_links (token, delivery_id, kind, url, goal, created_at) "
    "SELECT l.token, l.delivery_id, l.kind, l.url, l.goal, :created_at FROM unnest("
    "CAST(:token AS varchar[]), CAST(:delivery_id AS integer[]), CAST(:kind AS varchar[]), "
    "CAST(:url AS text[]), CAST(:goal AS varchar[])) AS l(token, delivery_id, kind, url, goal) "
    "ON CONFLICT (token) DO NOTHING"
)


def store_links_of(session: Session, rows_by_delivery: dict[int, list[LinkRow]]) -> None:
    """``store_links`` for several deliveries in one statement (the sender stores a whole group's)."""
    values = [
        {"token": r.token, "delivery_id": delivery_id, "kind": r.kind, "url": r.url, "goal": r.goal}
        for delivery_id, rows in rows_by_delivery.items()
        for r in rows
    ]
    if not values:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        columns = {name: [value[name] for value in values] for name in _LINK_COLUMNS}
        session.connection().execute(_STORE_LINKS_PG, {**columns, "created_at": clock.now()})
        return
    statement = sqlite.insert(TrackedLink).values(values)
    session.execute(statement.on_conflict_do_nothing(index_elements=[TrackedLink.token]))
