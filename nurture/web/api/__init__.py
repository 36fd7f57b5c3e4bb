"""The staff JSON API, ``/api/v1``: bearer tokens (``nurture users token``), role checks, typed bodies and
answers, and one error shape, ``{"error": {"code": ..., "message": ...}}``. OpenAPI at ``/openapi.json``
lists every route with its body, its answers and every status it can give; tests/web/api/test_openapi_fuzz.py
runs an OpenAPI fuzzer against it.

Modules, one router per resource:

* ``sequences``          list, one, stats; pause, resume, schedule, enroll existing subscribers
* ``sequence_versions``  draft (PUT), plan, publish, archive
* ``subscribers``        search, explain log, the six staff actions, the GDPR export of one
* ``subscriber_files``   CSV import (a streamed body) and CSV export
* ``users``              staff users and their API tokens (admins)
* ``webhooks``           outbound webhook endpoints, their deliveries, test, replay
* ``deliveries``         unknown send outcomes, and resolving the held ones
* ``events``             events reported by other systems (goals, exit events)
* ``bounces``            bounce reports handed over by a mail server (its own bearer token, mounted by
                         ``web.app``; kept out of the staff spec, as its caller is a mail server, not staff)

Shared by them:

* ``deps``     the ``Annotated[..., Depends(...)]`` parameters: ``Viewer``/``Editor``/``Admin`` (the caller),
  ``DbSession`` (a read's transaction), ``AppSettings``, and the path parameters that name rows
* ``routing``  ``ApiRoute``, the route class that reads bodies strictly and refuses unstorable text
* ``errors``   ``ApiError``, the error model, ``error_responses(...)`` for the spec, the exception handlers
* ``schemas``  the request body base (JSON types, strictly), instants, shapes several resources answer with
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from nurture.web.api import (
    deliveries,
    events,
    sequence_versions,
    sequences,
    subscriber_files,
    subscribers,
    users,
    webhooks,
)
from nurture.web.api.errors import API_PATHS, ApiError, error_response, install_handlers
from nurture.web.api.subscriber_files import run_import
from nurture.web.api.subscribers import explain, search_subscribers

__all__ = ["ApiError", "error_response", "explain", "install", "run_import", "search_subscribers"]

ROUTERS = (
    sequences.router,
    subscribers.router,
    subscriber_files.router,
    users.router,
    webhooks.router,
    sequence_versions.router,
    deliveries.router,
    events.router,
)


def install(app: FastAPI) -> None:
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    _document_no_422(app)


def _document_no_422(app: FastAPI) -> None:
    """FastAPI lists a 422 with its own error format on every route that takes input. The API never gives
    one (a body that fails its model is a 400 in the API's shape, nurture.web.api.errors), so the spec must
    not promise it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI keeps it as app.openapi_schema: changed once, served from then on
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(API_PATHS):
                    for operation in operations.values():
                        operation.get("responses", {}).pop("422", None)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
