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
# the dashboard offline: Solara's front-end files, from the npm registry into Solara's cache
.venv/bin/python scripts/solara_assets.py
# the dashboard's browser test drives Debian's Chromium (CI runs as root; about 25 s)
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: no /usr/bin/chromium; tests/test_app.py needs it (sudo apt-get install chromium)" >&2
  fi
fi
echo "setup: .venv ready ($(.venv/bin/python --version))"
