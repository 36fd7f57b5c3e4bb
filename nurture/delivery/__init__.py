"""Getting due email out: leases, dispatch, sending, and the guards around the wire.

- ``leases``: one claim / renew / begin / finish / release / reap for every leased table (deliveries, the
  confirmation outbox, webhook deliveries), on the database's clock
- ``dispatch``: the beat's tick: claim due deliveries and hand them to workers in groups
- ``sender``: send a claimed group: render, hand over, record each outcome before the next email
- ``receipts``: the proof written right after each SMTP 250 (what the reaper reads after a crash)
- ``unknown_outcomes``: emails whose fate a crash left unknown, and their resolution
- ``mailer``: what every email sender holds (settings, database, transport, templates, rate limit, breaker)
- ``confirmations``: the outbox worker that sends double opt-in emails
- ``frequency_cap``: no two sequences mail one person less than N hours apart
- ``send_rate``, ``circuit_breaker``, ``transport_guards``: the rate limit and breaker per SMTP transport
- ``metrics``: Prometheus figures counted by the database
- ``doctor``: the checks behind ``nurture doctor`` and ``/healthz/ready``
"""
