#!/usr/bin/env bash
# The whole test suite: set up .venv with the test extras, lint (ruff, the import layers), then
# run pytest on 2 workers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh" test
cd "$root"
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache --no-logo  # the layer contracts in pyproject.toml
exec .venv/bin/python -m pytest -n 2 --dist loadfile -q "$@"
