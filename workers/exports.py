"""Export snapshots, built on the CPU queue (`default`)."""

from __future__ import annotations

from webapp import background
from webapp.celery_app import app
from webapp.exports.building import run_snapshot


@app.task(name=background.BUILD_EXPORT_SNAPSHOT)
def build_snapshot(snapshot_id: int) -> bool:
    """Claim and build the snapshot. A redelivered task finds it claimed and returns False; a
    failure is recorded on the snapshot (FAILED with the reason), not raised, so the broker does
    not retry a build that will fail the same way."""
    return run_snapshot(snapshot_id)
