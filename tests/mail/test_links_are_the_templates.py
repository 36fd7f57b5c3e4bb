"""Only links the templates write are tracked: a subscriber's own data never becomes a /l/ redirect (issue:
security, item 2, open redirect through a first name)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.db import transaction
from nurture.mail.transports import MemoryTransport
from nurture.models import Subscriber, TrackedLink
from tests.subscribers.test_clicks import CONTACT, TRACKED, client, parts, world  # noqa: F401
from tests.support.helpers import dispatch_inline, make_sender, subscribe

EVIL = "https://evil.example/login"


def test_a_url_in_the_first_name_is_not_tracked(world: sessionmaker[Session], client) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    subscribe(world, "victim@example.com", "course")
    # Stored as an older release (or a direct database write) may have left it: the rewriter is the guard.
    with transaction(world) as session:
        session.execute(update(Subscriber).values(first_name=EVIL))
    outbox = MemoryTransport()
    dispatch_inline(world, make_sender(world, outbox))
    _message, text, html = parts(outbox.outbox[-1].data)
    assert EVIL in text  # shown as the text it is, not rewritten
    assert TRACKED.search(text), "the template's own links are still tracked"
    with transaction(world) as session:
        urls = set(session.scalars(select(TrackedLink.url)))
    assert EVIL not in urls
    assert CONTACT in urls
    for token in TRACKED.findall(text + html):
        location = client.get(f"/l/{token}").headers["location"]
        assert not location.startswith("https://evil.example")
