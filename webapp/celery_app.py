"""The project's one Celery app: configuration only, no task code.

The web side uses it to send tasks by name (`webapp.background`); the worker processes load it
through `workers.app`, which registers the task bodies.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("rlhf")
app.config_from_object("django.conf:settings", namespace="CELERY")


def ensure_broker_folders() -> None:
    """The file-system broker of the embedded default expects its folders to exist."""
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    for key in ("data_folder_in", "data_folder_out", "control_folder", "processed_folder"):
        if key in options:
            Path(options[key]).mkdir(parents=True, exist_ok=True)


if settings.CELERY_BROKER_URL.startswith("filesystem://"):
    ensure_broker_folders()
