"""The ``nurture`` command: one module per command group.

- ``common``: the settings every command loads (an invalid setting is a message, not a traceback)
- ``database``: ``db upgrade``
- ``sequences``: ``sequences validate|sync|plan|publish|archive|export|enroll|list|timeline|preview``,
  ``send-test``
- ``subscribers``: ``subscribers add|import|export|erase|pause|resume|unsubscribe|resubscribe|remove``,
  ``export-one``
- ``users``: ``users create|token|setup-link|list|role|deactivate|reactivate``
- ``deliveries``: ``dispatch --once``, ``deliveries unknown|mark-sent|send-again``
- ``bounces``: ``bounces scan``
- ``doctor``: ``doctor``
- ``dkim``: ``dkim keygen|record``
- ``webhooks``: ``webhooks ...``
- ``processes``: ``web``, ``worker``, ``beat``, ``run``; ``run_summary`` is what ``run`` prints first;
  ``keep_alive`` starts ``worker``'s Celery worker again when it dies unasked
"""

from __future__ import annotations

import os

import click

from nurture.cli.bounces import bounces
from nurture.cli.database import db
from nurture.cli.deliveries import deliveries, dispatch
from nurture.cli.dkim import dkim
from nurture.cli.doctor import doctor
from nurture.cli.processes import beat, run, web, worker
from nurture.cli.sequences import send_test, sequences
from nurture.cli.subscribers import subscribers
from nurture.cli.users import users
from nurture.cli.webhooks import webhooks


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """nurture: email nurture sequences, scheduled in the database and sent by Celery workers."""


for command in (
    db,
    sequences,
    send_test,
    subscribers,
    users,
    dispatch,
    deliveries,
    bounces,
    doctor,
    dkim,
    webhooks,
    web,
    worker,
    beat,
    run,
):
    main.add_command(command)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
