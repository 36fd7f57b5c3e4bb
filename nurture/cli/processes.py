"""``nurture web``, ``worker``, ``beat`` and ``run``: the long-running processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import click

from nurture.cli.common import load_settings
from nurture.cli.database import upgrade_schema
from nurture.cli.sequences import sync_files
from nurture.cli.users import setup_token

WEB_GRACEFUL_SECONDS = 20  # below docker-compose's stop_grace_period for web (30 s)


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def web(host: str, port: int, workers: int) -> None:
    """The web app (public pages, health checks)."""
    import uvicorn

    from nurture.core.logs import logging_config

    settings = load_settings()
    uvicorn.run(
        "nurture.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Every uvicorn worker process applies this: JSON lines in production, request ids on access lines.
        log_config=logging_config(settings, "web"),
        # SIGTERM: stop accepting, let requests in flight finish for up to this long, then exit.
        timeout_graceful_shutdown=WEB_GRACEFUL_SECONDS,
    )


@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", default=None, type=int, help="Worker processes (default: CPU count).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """A Celery worker that sends email (extra arguments go to `celery worker`), started again if it dies."""
    extra = [*(["--concurrency", str(concurrency)] if concurrency else []), *celery_args]
    if os.environ.get(KEPT_ENV) == "1":
        _celery(["worker", "--loglevel", "INFO", *extra])
        return
    import logging.config

    from nurture.cli.keep_alive import keep_alive
    from nurture.core.logs import logging_config

    settings = load_settings()  # a bad setting stops here, once, instead of in every restarted child
    logging.config.dictConfig(logging_config(settings, "worker"))
    command = [sys.executable, "-m", "nurture.cli", "worker", *extra]
    code = keep_alive(command, {**os.environ, KEPT_ENV: "1"}, name="celery worker")
    sys.exit(128 - code if code < 0 else code)  # killed by a signal: the shell's 128 + N


@click.command("beat")
def beat() -> None:
    """The scheduler that triggers a dispatch tick every NURTURE_DISPATCH_INTERVAL seconds."""
    _celery(["beat", "--loglevel", "INFO"])


# Set for the Celery worker that `nurture worker` keeps alive (nurture/cli/keep_alive.py says why).
KEPT_ENV = "NURTURE_KEPT_ALIVE"
# `nurture run` sets this for its worker and beat: it has printed its own summary, so Celery's start-up
# banners and its warning about running as root (said once in that summary) would only bury it.
QUIET_ENV = "NURTURE_QUIET_START"


def _celery(args: list[str]) -> None:
    from nurture.celery_app import app

    load_settings().var_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get(QUIET_ENV) == "1":
        import warnings

        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)
        args = ["--quiet", *args]
    from celery.signals import worker_init

    workers: list[object] = []
    worker_init.connect(lambda sender, **_: workers.append(sender), weak=False)
    app.start(argv=args)
    # app.start() drops the worker's exit code (it returns None after an "Unrecoverable error" too), so it
    # is read from the worker itself: a failure must exit 1, not 0, for `nurture worker`'s keeper (and any
    # orchestrator) to tell it from a stop.
    code = getattr(workers[-1], "exitcode", 0) if workers else 0
    if code:
        sys.exit(code)


@click.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def run(host: str, port: int) -> None:
    """Everything in one command: migrate, sync sequences, then web + worker + beat until Ctrl-C."""
    from nurture.cli.run_summary import summary

    settings = load_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade_schema()
    for line in sync_files():
        click.echo(line)  # a refused sequence is reported and keeps its live version; the rest start
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    click.echo(summary(settings, base, setup_token(settings)))
    os.environ[QUIET_ENV] = "1"
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Worker-side metrics (send latency) reach the web's /metrics through files shared by all children.
        metrics_dir = (settings.var_dir / "metrics").resolve()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    exe = [sys.executable, "-m", "nurture.cli"]
    commands = {
        "web": [*exe, "web", "--host", host, "--port", str(port)],
        "worker": [*exe, "worker"],
        "beat": [*exe, "beat"],
    }
    children = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                click.echo(f"{name} exited with {child.returncode}; stopping the rest", err=True)
                exit_code = child.returncode or 1
                stopping = True
        time.sleep(0.5)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # warm shutdown: workers finish their current task
    deadline = time.monotonic() + 30
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    sys.exit(exit_code)
