"""Real browsers and a real server for the browser tests: Debian's chromium (never Playwright's own
download) and the ASGI app served by uvicorn in a thread of the test process, so the test and the app share
one clock."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import uvicorn

from tests.conftest import service_missing
from tests.support.processes import wait_until

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("NURTURE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        service_missing("chromium", FileNotFoundError("install Debian's chromium: apt-get install chromium"))
    return path


class WebServer:
    """uvicorn serving the app in a thread of this process, so the test and the app share one clock."""

    def __init__(self, port: int) -> None:
        from nurture.web.app import create_app

        config = uvicorn.Config(
            create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> WebServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
