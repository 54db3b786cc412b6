"""The import rules of ARCHITECTURE.md are contracts that `lint-imports` enforces.

These tests prove the contracts can fail: run over a small tree that breaks each rule, they must
report every break; run over this project, they must all be kept.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def write_package(root: Path, name: str, source: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "module.py").write_text(source)


def run_lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_contracts_catch_each_forbidden_import(tmp_path: Path) -> None:
    write_package(tmp_path, "rlhf_core", "import django\nimport workers.module\n")
    write_package(tmp_path, "webapp", "import torch\n")
    write_package(tmp_path, "workers", "import rlhf_core.module\nimport webapp.module\n")
    config = tmp_path / "pyproject.toml"
    shutil.copy(ROOT / "pyproject.toml", config)  # the project's own contracts
    result = run_lint_imports(tmp_path, config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 broken" in result.stdout
    assert "rlhf_core.module -> django" in result.stdout
    assert "webapp.module -> torch" in result.stdout


def test_this_project_keeps_every_contract() -> None:
    result = run_lint_imports(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
