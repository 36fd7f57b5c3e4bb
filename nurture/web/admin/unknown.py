"""Held deliveries in the staff UI: mark one sent, or send it again (nurture.delivery.unknown_outcomes).

The buttons stand on the subscriber page beside each delivery held as ``ambiguous``; every POST checks CSRF,
then the editor role, then the delivery, and is audited.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from nurture.core.db import transaction
from nurture.core.ids import parse_id
from nurture.delivery import unknown_outcomes
from nurture.models import Delivery
from nurture.web.admin.auth import BadRequest
from nurture.web.admin.common import NotFound, known_action, q, settings_of
from nurture.web.admin.deps import EditorForm

router = APIRouter(prefix="/admin", include_in_schema=False)
DONE = {
    unknown_outcomes.MARK_SENT: "Delivery {delivery} marked sent.",
    unknown_outcomes.SEND_AGAIN: "Delivery {delivery} will be sent again now, with the same Message-ID.",
}


@router.post("/deliveries/{delivery_id}/{action}")
async def resolve_held(
    request: Request,
    delivery_id: str,
    action: Annotated[str, Depends(known_action(unknown_outcomes.ACTIONS))],
    form: EditorForm,
) -> Response:
    actor = form.actor
    target = parse_id(delivery_id)
    if target is None:
        raise NotFound("There is no such delivery.")
    settings = settings_of(request)

    def work() -> tuple[int, dict[str, object]]:
        with transaction() as session:
            delivery = session.get(Delivery, target)
            if delivery is None:
                raise NotFound("There is no such delivery.")
            try:
                result = unknown_outcomes.resolve(session, settings, target, action, actor)
                return delivery.subscriber_id, result
            except unknown_outcomes.ResolveError as exc:
                if exc.code == "not_found":
                    raise NotFound(exc.message) from None
                raise BadRequest(409, exc.message[:1].upper() + exc.message[1:] + ".") from None

    subscriber_id, result = await run_in_threadpool(work)
    return RedirectResponse(
        f"/admin/subscribers/{subscriber_id}?done={q(DONE[action].format(**result))}", status_code=303
    )
