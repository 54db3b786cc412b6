# Shared by bin/run and bin/test: find Python 3.11+, create the virtual environment once and
# install the project into it, again only when pyproject.toml changes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "Python 3.11 or newer is needed; set PYTHON=/path/to/python3.11." >&2
    exit 1
}

# torch first, at the version pyproject.toml pins: installed on its own it comes from the local
# CPU wheel; pulled in by another package it could download several GB of CUDA packages.
torch_pin() {
    grep -o '"torch==[^"]*"' "$ROOT/pyproject.toml" | tr -d '"'
}

# ensure_venv EXTRAS [VENV]: a virtual environment holding the project with those extras.
ensure_venv() {
    local extras="$1" venv="${2:-$VENV}" hash stamp
    hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
    stamp="$venv/.installed-$hash-${extras//,/-}"
    if [ -f "$stamp" ] ||
        { [ "$extras" = ml ] && [ -f "$venv/.installed-$hash-ml-simulation-dev" ]; }; then
        return
    fi
    echo "Installing the project into ${venv#"$ROOT"/} (first run: about a minute)…"
    [ -x "$venv/bin/python" ] || "$(find_python)" -m venv "$venv"
    "$venv/bin/python" -m pip install -qq --upgrade pip
    "$venv/bin/python" -m pip install -qq "$(torch_pin)"
    "$venv/bin/python" -m pip install -qq --editable "$ROOT[$extras]"
    rm -f "$venv"/.installed-*
    touch "$stamp"
}

# ensure_core_venv VENV: rlhf_core's own dependencies (the simulation extra included) and pytest,
# and no Django at all, to prove that the model package stands on its own.
ensure_core_venv() {
    local venv="$1" hash stamp
    hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
    stamp="$venv/.installed-$hash-core"
    [ -f "$stamp" ] && return
    echo "Installing rlhf_core's dependencies (without Django) into ${venv#"$ROOT"/}…"
    [ -x "$venv/bin/python" ] || "$(find_python)" -m venv "$venv"
    "$venv/bin/python" -m pip install -qq --upgrade pip
    "$venv/bin/python" -m pip install -qq "$(torch_pin)"
    "$venv/bin/python" - "$ROOT/pyproject.toml" >"$venv/requirements-core.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
wanted = ("pytest", "pytest-timeout", "hypothesis")
tools = [r for r in extras["dev"] if r.split(">")[0].split("=")[0] in wanted]
print("\n".join(extras["ml"] + extras["simulation"] + tools))
PY
    "$venv/bin/python" -m pip install -qq -r "$venv/requirements-core.txt"
    rm -f "$venv"/.installed-*
    touch "$stamp"
}
