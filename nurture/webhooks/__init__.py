"""Signed outbound webhooks (docs/webhooks.md).

- ``event_types``: which internal events are published, under which public name, with which payload
- ``fanout``: reads the event log after a cursor; one ``webhook_deliveries`` row per event per endpoint
- ``sending``: claims due rows (the shared lease worker), POSTs them signed, retries with backoff and
  disables an endpoint that keeps failing
- ``signing``: the signature header; ``secrets``: endpoint secrets, stored encrypted
- ``urls``: the client that refuses private addresses at connect time
- ``endpoints``: the staff operations the UI, API and CLI share
- ``verify``: the sample receiver-side verifier that the docs quote
"""
