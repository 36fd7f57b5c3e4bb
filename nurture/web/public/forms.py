"""Reading request bodies from strangers: size-capped, strictly UTF-8, form or JSON, never a 500.

Starlette's form parser is lenient about encodings (it replaces what it cannot decode), which would let
garbage reach the database looking like text; here an undecodable body is a 400, and a caller only ever sees
a flat ``dict`` of field name to value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request

from nurture.subscribers.consent import Origin

MAX_BODY_BYTES = 32 * 1024
MAX_FIELDS = 40
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


class BadBody(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class Body:
    fields: dict[str, Any]
    is_json: bool


def media_type(request: Request) -> tuple[str, str | None]:
    """The content type without parameters, and the declared charset if any."""
    header = request.headers.get("content-type", "")
    kind, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return kind.strip().lower(), charset


def wants_json(request: Request) -> bool:
    kind, _ = media_type(request)
    return kind == JSON or kind.endswith("+json")


async def read_body(
    request: Request,
    *,
    allow_json: bool = True,
    max_bytes: int = MAX_BODY_BYTES,
    max_fields: int = MAX_FIELDS,
    lists: frozenset[str] = frozenset(),
) -> Body:
    """The body as a flat dict; a form field named in ``lists`` keeps every value, as a list (checkboxes)."""
    kind, charset = media_type(request)
    kind = kind or FORM  # a bare POST (a button with no fields, curl -X POST) is an empty form
    is_json = wants_json(request)
    if not (kind == FORM or (allow_json and is_json)):
        raise BadBody(415, f"send {FORM}" + (f" or {JSON}" if allow_json else ""))
    if charset not in (None, "utf-8", "utf8"):
        raise BadBody(415, "the body must be UTF-8")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > max_bytes:
            raise BadBody(413, f"the body must be at most {max_bytes} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody(400, "the body is not valid UTF-8") from None
    if is_json:
        return Body(_json_fields(text), True)
    return Body(_form_fields(text, max_fields, lists), False)


def _json_fields(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadBody(400, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadBody(400, "the body must be a JSON object")
    if len(value) > MAX_FIELDS:
        raise BadBody(400, "too many fields")
    return value


def _form_fields(
    text: str, max_fields: int = MAX_FIELDS, lists: frozenset[str] = frozenset()
) -> dict[str, Any]:
    try:
        # errors="strict": a percent-escape that is not UTF-8 (``%FF``) is refused, not replaced.
        pairs = parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=max_fields
        )
    except (UnicodeDecodeError, ValueError):
        raise BadBody(400, "the form body is not valid") from None
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in lists:
            fields.setdefault(key, []).append(value)
        else:
            fields.setdefault(key, value)  # first value wins, as in browsers' single-valued inputs
    return fields


def origin_of(request: Request) -> Origin:
    """Client address (as the ASGI server reports it: run uvicorn with --proxy-headers behind a proxy),
    user agent and the page the form was on, for the consent ledger and the rate limit."""
    return Origin.of(
        request.client.host if request.client else None,
        request.headers.get("user-agent"),
        request.headers.get("referer"),
    )
