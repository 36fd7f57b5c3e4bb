"""``python -m nurture.cli``: the same command as ``nurture``."""

import os

from nurture.cli import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
main()
