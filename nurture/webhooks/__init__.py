"""Signed outbound webhooks (docs/webhooks.md).

fanout.py reads the event log after a cursor and makes one ``webhook_deliveries`` row per event per endpoint
that asked for it; sending.py claims due rows, POSTs them signed (signing.py) through a client that refuses
private addresses at connect time (urls.py), retries with backoff and disables an endpoint that keeps
failing; endpoints.py holds the staff operations the UI, API and CLI share; verify.py is the sample
receiver-side verifier that the docs quote.
"""
