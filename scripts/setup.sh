#!/usr/bin/env bash
# Create .venv with a Python >= 3.12 and install the project with its dev tools.
# Looks for python3.13 / python3.12 / python3 on PATH, then pyenv's installed versions.
set -euo pipefail
cd "$(dirname "$0")/.."

suitable() {  # prints the interpreter if it is Python >= 3.12
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1 && echo "$1"
}

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && suitable "$(command -v "$candidate")" && return 0
  done
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    [ -x "$candidate" ] && suitable "$candidate" && return 0
  done
  return 1
}

python=$(find_python) || { echo "setup: no Python >= 3.12 found (set PYTHON=/path/to/python3.12)" >&2; exit 2; }
if [ ! -x .venv/bin/python ] || ! suitable .venv/bin/python >/dev/null; then
  rm -rf .venv
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "setup: .venv ready ($(.venv/bin/python --version))"
