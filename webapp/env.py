"""Read settings from environment variables, failing loudly on values that make no sense.

A typo such as `DEBUG=ture` must stop the process at start-up with a message naming the variable,
not run quietly with a default the operator did not ask for.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip():
        raise ImproperlyConfigured(f"{name} is set but empty; unset it to use the default.")
    return value.strip()


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of {sorted(_TRUE | _FALSE)}, got {value!r}.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}.")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; blank entries are an error (they hide typos like `a,,b`)."""
    value = os.environ.get(name)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if not all(items):
        raise ImproperlyConfigured(f"{name} has an empty entry: {value!r}.")
    return items


def env_path(name: str, default: Path) -> Path:
    """An absolute directory path. Relative paths are refused: they change with the working dir."""
    value = os.environ.get(name)
    if value is None:
        return default
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ImproperlyConfigured(f"{name} must be an absolute path, got {value!r}.")
    if path.exists() and not path.is_dir():
        raise ImproperlyConfigured(f"{name} points at a file, not a directory: {value!r}.")
    return path


def secret_key_from(data_dir: Path) -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the data directory.

    The file is created atomically (written under a temporary name, then hard-linked into place,
    which fails if another process won the race) so concurrent first starts agree on one key.
    """
    from_env = os.environ.get("SECRET_KEY")
    if from_env is not None:
        if len(from_env) < 32:
            raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long.")
        return from_env
    key_file = data_dir / "secret_key"
    if not key_file.exists():
        import secrets
        import tempfile

        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=data_dir, prefix=".secret_key.")
        try:
            with os.fdopen(fd, "w") as tmp:
                tmp.write(secrets.token_urlsafe(50))
            with contextlib.suppress(FileExistsError):  # another process won the race
                os.link(tmp_name, key_file)
        finally:
            os.unlink(tmp_name)
    return key_file.read_text().strip()
