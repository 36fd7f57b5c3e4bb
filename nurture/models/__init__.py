"""The schema, tables by area; everything is re-exported here, so ``from nurture.models import X`` works
for every table and status.

- ``subscribers``: subscribers, consent records, the suppression list, abuse-limit counters
- ``sequences``: sequences, versions, steps, enrollments
- ``delivery``: deliveries, send receipts, the confirmation outbox
- ``activity``: the event log, external events, goals, tracked links and clicks
- ``staff``: staff users, API tokens, login failures, the audit log, setup tokens, jobs
- ``webhooks``: endpoints, webhook deliveries and attempts, the fan-out cursor
- ``events``: appending to the event log; ``abuse_limits``: the fixed-window counters' one upsert;
  ``lease_indexes``: the pending-due and leased partial indexes of every leased work table
"""

from __future__ import annotations

from nurture.models.activity import Event, ExternalEvent, GoalCompletion, LinkClick, TrackedLink
from nurture.models.delivery import (
    OPEN_DELIVERY_STATUSES,
    Delivery,
    DeliveryStatus,
    OutboxMessage,
    OutboxStatus,
    SendReceipt,
)
from nurture.models.sequences import (
    Enrollment,
    EnrollmentStatus,
    Sequence,
    SequenceStatus,
    SequenceVersion,
    Step,
)
from nurture.models.staff import (
    ApiToken,
    AuditLog,
    Job,
    JobStatus,
    LoginFailure,
    SetupToken,
    StaffRole,
    StaffUser,
)
from nurture.models.subscribers import (
    ConsentRecord,
    RateLimitCounter,
    Subscriber,
    SubscriberStatus,
    Suppression,
)
from nurture.models.webhooks import (
    WebhookAttempt,
    WebhookCursor,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)

__all__ = [
    "OPEN_DELIVERY_STATUSES",
    "ApiToken",
    "AuditLog",
    "ConsentRecord",
    "Delivery",
    "DeliveryStatus",
    "Enrollment",
    "EnrollmentStatus",
    "Event",
    "ExternalEvent",
    "GoalCompletion",
    "Job",
    "JobStatus",
    "LinkClick",
    "LoginFailure",
    "OutboxMessage",
    "OutboxStatus",
    "RateLimitCounter",
    "SendReceipt",
    "Sequence",
    "SequenceStatus",
    "SequenceVersion",
    "SetupToken",
    "StaffRole",
    "StaffUser",
    "Step",
    "Subscriber",
    "SubscriberStatus",
    "Suppression",
    "TrackedLink",
    "WebhookAttempt",
    "WebhookCursor",
    "WebhookDelivery",
    "WebhookDeliveryStatus",
    "WebhookEndpoint",
]
