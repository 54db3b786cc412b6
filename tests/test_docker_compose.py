"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The file must parse, describe the production set-up, and every command it runs must exist in
this project (modules, Celery app and queues, management commands, URLs, settings variables).
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands
from django.urls import resolve

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
APP_SERVICES = ["migrate", "web", "worker", "beat", "gpu-worker"]


def command_of(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def option(command: list[str], *names: str) -> str:
    for index, token in enumerate(command):
        if token in names:
            return command[index + 1]
    raise AssertionError(f"none of {names} in {command}")


def test_it_describes_the_production_services() -> None:
    assert set(SERVICES) >= {"postgres", "redis", "web", "worker", "beat", "gpu-worker"}
    assert set(COMPOSE["volumes"]) >= {"postgres-data", "data", "models"}
    assert "postgres-data:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    for service in APP_SERVICES:
        assert "models:/models" in SERVICES[service]["volumes"]


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in SERVICES.items():
        if name != "migrate":
            assert service["healthcheck"]["test"], name


def test_the_web_service_runs_the_projects_wsgi_app_under_gunicorn() -> None:
    command = command_of("web")
    assert command[0] == "gunicorn"
    module, attribute = command[1].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_the_web_health_check_calls_an_url_of_the_project() -> None:
    check = " ".join(SERVICES["web"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:8000(/\S*?)'", check)
    assert path is not None
    assert resolve(path.group(1)).url_name == "healthz"


@pytest.mark.parametrize(("service", "queue"), [("worker", "default"), ("gpu-worker", "gpu")])
def test_the_workers_run_the_projects_celery_app_on_their_queue(service: str, queue: str) -> None:
    command = command_of(service)
    assert command[:2] == ["celery", "-A"]
    app = importlib.import_module(command[2]).app
    assert option(command, "-Q", "--queues") == queue
    assert queue in {app.conf.task_default_queue} | {
        route["queue"] for route in app.conf.task_routes.values()
    }
    assert f"--destination {queue}@" in " ".join(SERVICES[service]["healthcheck"]["test"])


def test_the_gpu_worker_reserves_a_gpu_and_runs_one_task_at_a_time() -> None:
    service = SERVICES["gpu-worker"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert option(command_of("gpu-worker"), "--concurrency", "-c") == "1"


def test_one_beat_runs_the_projects_schedule_and_keeps_it_in_the_data_volume() -> None:
    command = command_of("beat")
    assert command[:4] == ["celery", "-A", "workers.app", "beat"]
    app = importlib.import_module(command[2]).app
    schedule = option(command, "--schedule", "-s")
    assert schedule.startswith("/data/") and "data:/data" in SERVICES["beat"]["volumes"]
    assert "celerybeat-schedule" in " ".join(SERVICES["beat"]["healthcheck"]["test"])
    assert "replicas" not in SERVICES["beat"].get("deploy", {})  # one beat, never scaled
    # Every periodic task is one the workers run, on a queue a worker of the file listens to.
    worker_queues = {
        option(command_of(name), "-Q", "--queues") for name in ("worker", "gpu-worker")
    }
    assert app.conf.beat_schedule
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in app.tasks
        route = next(
            (r["queue"] for p, r in app.conf.task_routes.items() if _matches(p, entry["task"])),
            app.conf.task_default_queue,
        )
        assert route in worker_queues


def _matches(pattern: str, name: str) -> bool:
    return name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1]))


def test_the_migrate_service_runs_a_management_command_of_the_project() -> None:
    command = command_of("migrate")
    assert command[:2] == ["python", "manage.py"]
    assert command[2] in get_commands()


def test_the_images_it_builds_are_stages_of_the_dockerfile() -> None:
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, flags=re.MULTILINE))
    for name in APP_SERVICES:
        assert SERVICES[name]["build"]["target"] in stages


def test_everything_the_dockerfile_copies_exists() -> None:
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, flags=re.MULTILINE):
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_app_environment_only_sets_variables_the_settings_read() -> None:
    settings_source = (ROOT / "webapp" / "settings.py").read_text()
    env_source = (ROOT / "webapp" / "env.py").read_text()
    for variable in COMPOSE["x-app-environment"]:
        assert f'"{variable}"' in settings_source + env_source, variable
