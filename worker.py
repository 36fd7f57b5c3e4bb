"""The Celery application for `celery -A worker worker` and `celery -A worker beat`."""

from nurture.celery_app import app

__all__ = ["app"]
