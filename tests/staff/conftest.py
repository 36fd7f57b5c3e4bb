"""Staff accounts and the first admin, in the staff world."""

from tests.support.staff import (  # noqa: F401  (the staff fixtures, tests/support/staff.py)
    api,
    client,
    course,
    signed_in,
    tokens,
    world,
)
