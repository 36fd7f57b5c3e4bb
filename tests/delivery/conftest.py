"""Unknown outcomes are shown to staff, confirmations follow a prospect's signup: both worlds' fixtures,
with the staff client."""

from tests.support.public import app_factory, courses, prospect_client  # noqa: F401  (tests/support/public.py)
from tests.support.staff import (  # noqa: F401  (the staff fixtures, tests/support/staff.py)
    api,
    client,
    course,
    signed_in,
    tokens,
    world,
)
