#!/usr/bin/env bash
# Reproduce a paper's setting: check that its data and weights are present (listing what is
# missing and where to get it; exit status 1 if anything is), run it, print the paper's numbers
# next to jaxrank's. Targets and their sources: docs/REPRODUCE.md.
# Usage: bash scripts/reproduce.sh NAME [--workdir DIR] [--config.a.b=v ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh" ""  # no extras (not this script's arguments)
cd "$root"
exec .venv/bin/jaxrank reproduce "$@"
