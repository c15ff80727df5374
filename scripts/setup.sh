#!/usr/bin/env bash
# Creates .venv (Python 3.10) and installs requirements.lock into it with uv.
# Idempotent: when the lock has not changed since the last install it only
# checks and returns (about a second).
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=requirements.lock
VENV=.venv
STAMP="$VENV/.installed-lock.sha256"

find_python() {
  local candidates=(
    "${PYTHON:-}"
    python3.10
    /root/.pyenv/versions/3.10.13/bin/python3.10
    "$HOME"/.pyenv/versions/3.10*/bin/python3.10
    /usr/local/bin/python3.10
    /usr/bin/python3.10
    /opt/homebrew/bin/python3.10
  )
  local c
  for c in "${candidates[@]}"; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

find_uv() {
  if command -v uv >/dev/null 2>&1; then command -v uv; return 0; fi
  if [ -x .tools/bin/uv ]; then echo .tools/bin/uv; return 0; fi
  return 1
}

lock_sum=$(sha256sum "$LOCK" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$lock_sum" ]; then
  exit 0
fi

PY=$(find_python) || {
  echo "setup: no Python 3.10 found (tried \$PYTHON, python3.10, pyenv, /usr/local/bin, /usr/bin)." >&2
  echo "setup: install Python 3.10 or point PYTHON=/path/to/python3.10 at one." >&2
  exit 1
}

UV=$(find_uv) || {
  echo "setup: installing uv from PyPI into .tools/" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --target .tools uv==0.13.9
  UV=.tools/bin/uv
  export PYTHONPATH="$PWD/.tools${PYTHONPATH:+:$PYTHONPATH}"
}

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' 2>/dev/null; then
  rm -rf "$VENV"
  "$UV" venv --quiet --python "$PY" "$VENV"
fi
"$UV" pip sync --quiet --python "$VENV/bin/python" "$LOCK"
echo "$lock_sum" > "$STAMP"
echo "setup: installed $LOCK into $VENV in $(( $(date +%s) - start )) s" >&2
