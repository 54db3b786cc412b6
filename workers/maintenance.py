"""Housekeeping on the CPU queue (`default`), sent by celery beat (settings.CELERY_BEAT_SCHEDULE).

The reconciler is what makes rounds survive faults that no task can report itself: a worker
killed mid-round stops its heartbeat, and a broker that restarted empty forgot the round's
message. Rounds live in the database, so looking there once a minute finds both.
"""

from __future__ import annotations

import logging

from webapp import background
from webapp.celery_app import app
from webapp.training import rounds

logger = logging.getLogger(__name__)


@app.task(name=background.RECONCILE_TRAINING_ROUNDS)
def reconcile_rounds() -> dict[str, list[int]]:
    """Fail RUNNING rounds whose heartbeat stopped, re-send QUEUED rounds nobody took.

    Safe to run any number of times, from any number of beats at once: every change is a
    conditional update, and a duplicate message for a queued round is claimed once only.
    """
    done = rounds.reconcile()
    if done["failed"]:
        logger.warning("Rounds failed, their worker stopped its heartbeat: %s", done["failed"])
    if done["resent"]:
        logger.warning("Queued rounds sent again, no worker had taken them: %s", done["resent"])
    if not done["failed"] and not done["resent"]:
        logger.info("Training rounds reconciled: nothing to do.")
    return done
