"""Entry point of the worker processes: Django set up, then every task module registered."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django.setup()

from webapp.celery_app import app  # noqa: E402
from workers import exports, maintenance, system, training  # noqa: E402

__all__ = ["app", "exports", "maintenance", "system", "training"]
