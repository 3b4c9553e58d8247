# shellcheck shell=bash
# Shared by the scripts: make sure .venv exists with Python >= 3.11 and the given extras.
# Usage: source scripts/_venv.sh EXTRAS   (e.g. "embedded" or "dev")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "poller needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$1"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # constraints.txt pins every package to the versions CI tested (scripts/lock writes it).
  .venv/bin/python -m pip install --quiet --constraint constraints.txt -e ".[$1]"
  touch "$stamp"
fi
