"""The route class of every API router: input is checked at the edge, before FastAPI parses or validates it.

* A route with a body model reads its body with :func:`nurture.web.public.forms.read_body`, the strict reader
the
  API has always used: at most 32 KB (413), JSON or a form (else 415), UTF-8, a JSON object. An empty body
  is an empty object, so an action without fields can be a bare ``POST``. FastAPI then validates that
  object against the route's pydantic model, a form's fields as strings.
* Text that no database column can hold is refused here, in the body and the query (400), and in the path
  (404: nothing can be named by it): NUL characters (PostgreSQL rejects them) and unpaired surrogates
  (they cannot be encoded to UTF-8). Left to the database, either would be a 500.
* Bodies nested deeper than any real one are refused, so no later ``json.dumps`` or validator recurses
  until Python gives up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from nurture.web.api.errors import ApiError
from nurture.web.public.forms import BadBody, read_body

# A sequence draft is 4 levels deep; event properties are the caller's, but no real one is deeper than this.
MAX_DEPTH = 32
UNSTORABLE = "text must not contain NUL characters or unpaired surrogates"


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def body_problem(value: Any) -> str | None:
    """Why a parsed JSON body cannot be taken as it is, or None. Iterative: depth is what is checked."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"the body is nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, str):
            if not _storable(item):
                return UNSTORABLE
        elif isinstance(item, dict):
            stack.extend((key, depth + 1) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


async def _as_json_request(request: Request) -> Request:
    """The request with its body read strictly and handed to FastAPI as the JSON object it amounts to."""
    try:
        body = await read_body(request, allow_json=True)
    except BadBody as exc:
        raise ApiError(exc.status_code, "bad_request", exc.message) from None
    problem = body_problem(body.fields)
    if problem:
        raise ApiError(400, "invalid", problem)
    scope = dict(request.scope)
    # FastAPI parses a body as JSON only when it is declared so; a form or an empty body now is JSON.
    scope["headers"] = [
        (name, value) for name, value in request.scope["headers"] if name.lower() != b"content-type"
    ] + [(b"content-type", b"application/json")]
    replaced = Request(scope, request.receive)
    replaced._body = json.dumps(body.fields).encode()  # Request.body() returns this instead of reading
    return replaced


def _refuse_unstorable_parameters(request: Request, query_names: frozenset[str]) -> None:
    if any(not _storable(value) for value in request.path_params.values() if isinstance(value, str)):
        raise ApiError(404, "not_found", "there is no such resource")
    # Only the parameters the route reads: the others reach nothing, and a route without any answers no 400.
    for key, value in request.query_params.multi_items():
        if key in query_names and not _storable(value):
            raise ApiError(400, "invalid", f"{key}: {UNSTORABLE}")


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


class ApiRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        has_body_model = self.body_field is not None
        query_names = frozenset(_query_names(self.dependant))

        async def checked(request: Request) -> Response:
            _refuse_unstorable_parameters(request, query_names)
            if has_body_model:
                request = await _as_json_request(request)
            return await handle(request)

        return checked
