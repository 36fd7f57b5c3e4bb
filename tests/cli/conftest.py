"""The CLI's tests: the staff world's course and users."""

from tests.support.staff import (  # noqa: F401  (the staff fixtures, tests/support/staff.py)
    api,
    client,
    course,
    signed_in,
    tokens,
    world,
)
