"""Subscriber behaviour is reached by staff (actions, imports) and by prospects (signup, consent, retention):
both worlds' fixtures, with the staff client (the prospects' tests open their own with make_client)."""

from tests.support.public import app_factory, courses, prospect_client  # noqa: F401  (tests/support/public.py)
from tests.support.staff import (  # noqa: F401  (the staff fixtures, tests/support/staff.py)
    api,
    client,
    course,
    signed_in,
    tokens,
    world,
)
