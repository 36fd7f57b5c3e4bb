"""Sequence control and versions are driven by staff: the staff world's fixtures."""

from tests.support.staff import (  # noqa: F401  (the staff fixtures, tests/support/staff.py)
    api,
    client,
    course,
    signed_in,
    tokens,
    world,
)
