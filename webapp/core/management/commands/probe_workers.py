"""`manage.py probe_workers`: send a probe through every queue and wait for the workers' answers.

Exit status 0 when every queue answered in time, 1 otherwise: usable by operators and scripts.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webapp.core import services
from webapp.core.models import WorkerProbe


class Command(BaseCommand):
    help = "Check that a worker answers on each queue (default and gpu)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait (30)")

    def handle(self, *args: Any, **options: Any) -> None:
        probes = services.request_worker_probes(None)
        deadline = time.monotonic() + options["wait"]
        pending = list(probes)
        while pending and time.monotonic() < deadline:
            time.sleep(0.2)
            pending = [probe for probe in pending if not _answered(probe)]
        for probe in probes:
            probe.refresh_from_db()
            if probe.is_answered:
                self.stdout.write(
                    f"{probe.queue}: answered by {probe.worker} "
                    f"in {probe.round_trip_ms} ms {probe.details}"
                )
            else:
                self.stdout.write(f"{probe.queue}: no answer")
        if pending:
            queues = ", ".join(probe.queue for probe in pending)
            raise CommandError(f"No worker answered within {options['wait']:g} s on: {queues}.")


def _answered(probe: WorkerProbe) -> bool:
    return WorkerProbe.objects.filter(pk=probe.pk, answered_at__isnull=False).exists()
