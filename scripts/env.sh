#!/usr/bin/env bash
# Creates (once per pyproject.toml hash) a virtual environment outside the clone and
# installs this checkout into it in editable mode. Source it: it exports TUNEFORGE_PY.
# The environment is about 6 GB (torch), so it is shared between clones with the same
# pyproject.toml; a changed pyproject.toml builds a fresh one from scratch.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_hash="$(sha256sum "$_root/pyproject.toml" | cut -c1-12)"
_home="${TUNEFORGE_VENV_HOME:-$HOME/.cache/tuneforge}"
_venv="$_home/venv-$_hash"
_python="${PYTHON:-python3}"
mkdir -p "$_home"
exec 9>"$_venv.lock"
flock 9
if [ ! -f "$_venv/.complete" ]; then
    echo "tuneforge: building the environment $_venv (first run only, a few minutes)" >&2
    rm -rf "$_venv"
    "$_python" -m venv "$_venv"
    "$_venv/bin/python" -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
    # Install the dependencies (not the project itself) listed in pyproject.toml.
    "$_venv/bin/python" - "$_root/pyproject.toml" > "$_venv/requirements.txt" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))
PY
    "$_venv/bin/python" -m pip install --quiet -r "$_venv/requirements.txt"
    touch "$_venv/.complete"
fi
flock -u 9
# Point the editable install at this checkout (clones in other folders share the venv).
if ! "$_venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$_root" >"$_venv/editable.log" 2>&1; then
    cat "$_venv/editable.log" >&2
    echo "tuneforge: installing $_root into $_venv failed (log above)" >&2
    exit 1
fi
export TUNEFORGE_PY="$_venv/bin/python"
export TUNEFORGE_VENV="$_venv"
