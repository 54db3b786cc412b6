"""`manage.py embedded`: the whole application on one machine with no services to install.

Prepares the data directory (database, static files, demo accounts, the demo model), registers
the demo model as the base version and queues a round that puts its samples into the demo's
pairwise project, then runs the web server (gunicorn), one worker per queue on the file-system
broker (the `default` one also runs celery beat, whose schedule reconciles training rounds), and
with `--simulate` the simulated annotators (workers/simulation.py) that label, start a training
round and label its new samples. It supervises them: if one stops, everything stops, with the
tail of its log; only the simulation may finish.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from webapp.annotation.demo import seed_demo_projects
from webapp.core.demo import DemoAccount, accounts_with_published_passwords, ensure_demo_accounts
from webapp.training.demo import (
    SIMULATED_LABELS_PER_ROUND,
    SIMULATED_PREFERENCES,
    SIMULATED_PROJECT,
    prepare_demo_training,
)
from webapp.training.presets import DEFAULT_PRESET, PRESETS

READY_TIMEOUT_S = 60
SIMULATION = "simulation"


class Command(BaseCommand):
    help = "Run the web server and the workers on the embedded default (SQLite, file broker)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="address to serve on (%(default)s); any other than loopback makes the app "
            "reachable from other machines and needs the demo passwords changed first",
        )
        parser.add_argument(
            "--allow-demo-passwords",
            action="store_true",
            help="serve on a --host other than loopback although demo accounts still have "
            "their published passwords",
        )
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument(
            "--demo-steps",
            type=int,
            default=None,
            help="pretraining steps of the demo model (rlhf_core's default); 0: no demo model",
        )
        parser.add_argument(
            "--round-preset",
            choices=sorted(PRESETS),
            default=DEFAULT_PRESET,
            help="preset of the rounds the demo starts (%(default)s: the recipe for the demo "
            "model's size; ci: seconds, learns little)",
        )
        simulate = parser.add_argument_group(
            "simulated annotators",
            "Watch a whole training round: annotators with a known taste label the demo's "
            "pairwise project, a full round (reward model, PPO, new version, new samples) starts "
            "once enough labels are in, and they label the new samples for the leaderboard.",
        )
        simulate.add_argument(
            "--simulate", action="store_true", help="start the simulated annotators"
        )
        simulate.add_argument(
            "--simulate-labels",
            type=int,
            default=SIMULATED_LABELS_PER_ROUND,
            metavar="N",
            help="labels before each round starts (%(default)s)",
        )
        simulate.add_argument(
            "--simulate-rounds", type=int, default=1, metavar="N", help="(%(default)s)"
        )
        simulate.add_argument(
            "--simulate-pace",
            type=float,
            default=0.25,
            metavar="SECONDS",
            help="between two answers (%(default)s)",
        )
        simulate.add_argument(
            "--simulate-preference",
            default=SIMULATED_PREFERENCES[0],
            choices=SIMULATED_PREFERENCES,
            metavar="NAME",
            help=f"the annotators' hidden taste: {', '.join(SIMULATED_PREFERENCES)} (%(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        if options["simulate"]:
            _check_simulation_options(options)
        _refuse_busy_port(host, port)
        logs = _prepare_data_dir()
        self.stdout.write(f"Data directory: {settings.DATA_DIR}")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        accounts = ensure_demo_accounts()
        if not options["allow_demo_passwords"]:
            _refuse_published_passwords_off_loopback(host)
        seed_demo_projects()  # idempotent; every annotator and admin becomes a member
        if options["demo_steps"] != 0:
            self.stdout.write("Demo model (a tiny PaLM pretrained on Shakespeare):")
            self.stdout.flush()
            _build_demo_model(options["demo_steps"])
            self._prepare_demo_training(options["round_preset"])

        commands = _commands(host, port, options["web_workers"])
        if options["simulate"]:
            commands[SIMULATION] = _simulation_command(options)
        processes = _start_processes(commands, logs)
        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            url = f"http://{host}:{port}/"
            _wait_until_ready(url + "healthz", processes, logs)
            self._banner(url, accounts, logs, simulating=SIMULATION in processes)
            while not stopping:
                time.sleep(0.5)
                # On Ctrl+C the children get the signal too and may exit first: not a failure.
                for name, process in list(processes.items()):
                    if process.poll() is None or stopping:
                        continue
                    if name == SIMULATION:  # the app keeps serving what it did
                        self.stdout.write(_simulation_ended(process, logs))
                        self.stdout.flush()
                        del processes[name]
                        continue
                    raise CommandError(_died(name, process, logs))
            self.stdout.write("Stopping…")
        finally:
            _terminate(processes)

    def _banner(
        self, url: str, accounts: tuple[DemoAccount, ...], logs: Path, *, simulating: bool
    ) -> None:
        self.stdout.write(self.style.SUCCESS(f"\nRLHF Feedback is running at {url}"))
        self.stdout.write("Demo log-ins (username / password):")
        published = accounts_with_published_passwords()
        for account in accounts:
            password = account.password if account in published else "(password changed)"
            self.stdout.write(f"  {account.role.label:<11} {account.username} / {password}")
        if simulating:
            self.stdout.write(
                f"Simulated annotators are labelling {SIMULATED_PROJECT}; follow them in "
                f"{logs / (SIMULATION + '.log')} and the rounds at {url}training/"
            )
        self.stdout.write(f"Logs: {logs}\nPress Ctrl+C to stop.", ending="\n")
        self.stdout.flush()

    def _prepare_demo_training(self, preset: str) -> None:
        demo = prepare_demo_training(preset)
        serving = ", ".join(project.slug for project in demo.projects)
        self.stdout.write(f"Demo model registered as {demo.base.name}, serving {serving}.")
        for started in demo.generation_rounds:
            self.stdout.write(
                f"  Round {started.pk} puts its samples into {started.project.slug}'s queue "
                "once the workers run."
            )
        self.stdout.flush()


def _refuse_busy_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex((host, port)) == 0:
            raise CommandError(f"Port {port} on {host} is already in use; choose one with --port.")


def _refuse_published_passwords_off_loopback(host: str) -> None:
    if _is_loopback(host):
        return
    published = accounts_with_published_passwords()
    if not published:
        return
    names = ", ".join(account.username for account in published)
    raise CommandError(
        f"--host {host} makes the application reachable from other machines, and the demo "
        f"accounts {names} still have the passwords that the README publishes. Change them "
        "first (python manage.py changepassword USERNAME, for each one), or start with "
        "--allow-demo-passwords if every machine that can reach this address is trusted."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _build_demo_model(steps: int | None) -> None:
    """Run rlhf_core's demo command in its own process: the web side never imports model code.

    Its progress bars go straight to this terminal. A model already built is reused at once, and
    an interrupted pretraining resumes on the next start.
    """
    command = [sys.executable, "-m", "rlhf_core", "demo", "--out", str(_demo_model_dir())]
    if steps is not None:
        command += ["--steps", str(steps)]
    try:
        result = subprocess.run(command, check=False)
    except KeyboardInterrupt:
        raise CommandError("Interrupted; start again to resume the demo's training.") from None
    if result.returncode != 0:
        raise CommandError(f"Building the demo model failed (exit {result.returncode}), see above.")


def _demo_model_dir() -> Path:
    return Path(settings.MODEL_STORE_DIR) / "demo"


def _prepare_data_dir() -> Path:
    logs = Path(settings.DATA_DIR) / "logs"
    for folder in (logs, Path(settings.MODEL_STORE_DIR)):
        folder.mkdir(parents=True, exist_ok=True)
    return logs


def _commands(host: str, port: int, web_workers: int) -> dict[str, list[str]]:
    python = sys.executable
    worker = [python, "-m", "celery", "-A", "workers.app", "worker", "--pool", "solo"]
    worker += ["--loglevel", "INFO"]  # each task received and finished, in the worker's log
    # One beat in the whole installation: embedded in the default worker, its schedule (when
    # each periodic task last ran) kept in the data directory.
    beat = ["--beat", "--schedule", str(Path(settings.DATA_DIR) / "celerybeat-schedule")]
    return {
        "web": [
            *(python, "-m", "gunicorn", "webapp.wsgi:application"),
            *("--bind", f"{host}:{port}", "--workers", str(web_workers)),
            *("--access-logfile", "-"),
        ],
        "worker-default": [*worker, "-Q", "default", "-n", "default@%h", *beat],
        "worker-gpu": [*worker, "-Q", "gpu", "-n", "gpu@%h"],
    }


def _simulation_command(options: dict[str, Any]) -> list[str]:
    return [
        *(sys.executable, "-u", "-m", "workers.simulation", "--project", SIMULATED_PROJECT),
        *("--labels-per-round", str(options["simulate_labels"])),
        *("--rounds", str(options["simulate_rounds"])),
        *("--pace", str(options["simulate_pace"])),
        *("--preset", options["round_preset"]),
        *("--preference", options["simulate_preference"]),
    ]


def _check_simulation_options(options: dict[str, Any]) -> None:
    if options["demo_steps"] == 0:
        raise CommandError("--simulate needs the demo model; leave out --demo-steps 0.")
    if options["simulate_labels"] < 1 or options["simulate_rounds"] < 1:
        raise CommandError("--simulate-labels and --simulate-rounds must be at least 1.")
    if options["simulate_pace"] < 0:
        raise CommandError("--simulate-pace must not be negative.")


def _simulation_ended(process: subprocess.Popen[bytes], logs: Path) -> str:
    log = logs / f"{SIMULATION}.log"
    if process.returncode == 0:
        return f"The simulated annotators are done; what they did is in {log}."
    return _died(SIMULATION, process, logs) + "\nThe application keeps running."


def _start_processes(
    commands: dict[str, list[str]], logs: Path
) -> dict[str, subprocess.Popen[bytes]]:
    processes = {}
    for name, command in commands.items():
        log = (logs / f"{name}.log").open("ab")
        processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return processes


def _wait_until_ready(url: str, processes: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise CommandError(_died(name, process, logs))
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise CommandError(f"The web server did not answer {url} within {READY_TIMEOUT_S} s.")


def _died(name: str, process: subprocess.Popen[bytes], logs: Path) -> str:
    tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
    return f"{name} stopped with exit code {process.returncode}. Last lines of its log:\n" + (
        "\n".join(tail)
    )


def _terminate(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for process in processes.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
