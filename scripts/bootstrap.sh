#!/usr/bin/env bash
# Create .venv and install the project into it; a stamp of pyproject.toml skips the work when
# nothing changed, so every command can call this first at no cost.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
stamp=.venv/.installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test,bench]'
echo "$want" > "$stamp"
echo "bootstrap: installed the project into .venv"
