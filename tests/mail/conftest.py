"""Template sandboxing is tested through the staff editor: the staff world's fixtures."""

from tests.support.staff import (  # noqa: F401  (the staff fixtures, tests/support/staff.py)
    api,
    client,
    course,
    signed_in,
    tokens,
    world,
)
