"""The web adapters: FastAPI app and its routers.

- ``app``: ``create_app``: mounts everything below
- ``public/``: pages prospects reach (landing, signup, confirm, unsubscribe, preferences, tracked links)
- ``admin/``: the staff UI, one module per area
- ``api/``: the staff JSON API ``/api/v1``, one router per resource, typed bodies and answers
- ``health``: ``/healthz`` and ``/healthz/ready``; ``metrics``: ``/metrics`` for Prometheus
"""
