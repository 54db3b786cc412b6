import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp.env import env_bool, env_int, env_list, env_path, env_str, secret_key_from

ROOT = Path(__file__).resolve().parents[2]


def test_env_bool_reads_the_usual_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in [("1", True), ("Yes", True), ("off", False), ("FALSE", False)]:
        monkeypatch.setenv("FLAG", raw)
        assert env_bool("FLAG", not expected) is expected


def test_env_bool_refuses_a_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "ture")
    with pytest.raises(ImproperlyConfigured, match="DEBUG must be one of"):
        env_bool("DEBUG", False)


def test_unset_variables_give_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert env_str("NOT_SET_ANYWHERE", "x") == "x"
    assert env_int("NOT_SET_ANYWHERE", 3) == 3
    assert env_list("NOT_SET_ANYWHERE", ["a"]) == ["a"]
    assert env_path("NOT_SET_ANYWHERE", Path("/d")) == Path("/d")


def test_an_empty_string_is_an_error_not_a_silent_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "  ")
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL is set but empty"):
        env_str("DATABASE_URL", "sqlite://")


def test_env_int_checks_type_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N", "ten")
    with pytest.raises(ImproperlyConfigured, match="whole number"):
        env_int("N", 1)
    monkeypatch.setenv("N", "5")
    with pytest.raises(ImproperlyConfigured, match="at least 60"):
        env_int("N", 100, minimum=60)


def test_env_list_splits_and_refuses_blank_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_HOSTS", "a.example, b.example")
    assert env_list("ALLOWED_HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("ALLOWED_HOSTS", "a.example,,b.example")
    with pytest.raises(ImproperlyConfigured, match="empty entry"):
        env_list("ALLOWED_HOSTS", [])


def test_env_path_refuses_relative_paths_and_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODEL_STORE_DIR", "models")
    with pytest.raises(ImproperlyConfigured, match="absolute path"):
        env_path("MODEL_STORE_DIR", tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("")
    monkeypatch.setenv("MODEL_STORE_DIR", str(a_file))
    with pytest.raises(ImproperlyConfigured, match="not a directory"):
        env_path("MODEL_STORE_DIR", tmp_path)


def test_the_secret_key_is_generated_once_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    first = secret_key_from(tmp_path / "data")
    assert len(first) >= 50
    assert secret_key_from(tmp_path / "data") == first
    assert (tmp_path / "data" / "secret_key").stat().st_mode & 0o077 == 0


def test_a_short_secret_key_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SECRET_KEY", "short")
    with pytest.raises(ImproperlyConfigured, match="at least 32"):
        secret_key_from(tmp_path)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEBUG", "maybe", "DEBUG must be one of"),
        ("DATABASE_URL", "nosuchdb://x", "DATABASE_URL is not a database URL"),
        ("BROKER_URL", "amqp://guest@localhost//", "BROKER_URL must start with"),
        ("DATA_DIR", "relative/dir", "DATA_DIR must be an absolute path"),
    ],
)
def test_the_settings_module_stops_loudly_on_a_bad_value(
    variable: str, value: str, message: str, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), variable: value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert message in result.stderr
