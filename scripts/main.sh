#!/usr/bin/env bash
# The main job on the built-in default: set up .venv, then run Region-R1 end to end on the synthetic
# world. Extra arguments are passed to `jaxrank train` (e.g. --config.train.steps=100).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh" ""  # no extras (not this script's arguments)
cd "$root"
mkdir -p runs
exec .venv/bin/jaxrank train --config configs/region_r1/synthetic.py --workdir runs/default "$@"
