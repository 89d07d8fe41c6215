#!/usr/bin/env bash
# Create .venv and install jaxrank with the given extras (re-installs only when pyproject.toml
# changed). Usage: source scripts/setup_env.sh [extras]   e.g. "test"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
python3 -m venv --help >/dev/null 2>&1 || { echo "python3 with venv is required" >&2; exit 1; }
[ -x "$root/.venv/bin/python" ] || python3 -m venv "$root/.venv"
stamp="$root/.venv/.jaxrank-installed-${extras:-base}"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
# The base install is part of every extras install: any up-to-date stamp will do for it.
if [ -z "$extras" ] && grep -qxF "$want" "$root"/.venv/.jaxrank-installed-* 2>/dev/null; then
  stamp_ok=1
else
  stamp_ok=0
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && stamp_ok=1
fi
if [ "$stamp_ok" = 0 ]; then
  "$root/.venv/bin/python" -m pip install -q --upgrade pip
  spec="$root"; [ -n "$extras" ] && spec="$root[$extras]"
  "$root/.venv/bin/python" -m pip install -q -e "$spec"
  if [ "$extras" = test ]; then
    # XLA's TPU compiler for the planner's tests, outside sys.path: JAX would try to start a
    # TPU backend in every process that finds it importable (jaxrank/perf/tpu_target.py)
    pin="$(grep -o 'libtpu==[0-9.]*' "$root/pyproject.toml" | head -1)"
    "$root/.venv/bin/python" -m pip install -q --no-deps --upgrade --target "$root/.venv/libtpu" "$pin"
  fi
  echo "$want" > "$stamp"
fi
