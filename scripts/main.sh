#!/usr/bin/env bash
# The main job on the built-in default: set up .venv, then train and evaluate on the synthetic
# world. Extra arguments are passed to `jaxrank train` (e.g. --config.train.steps=100).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
mkdir -p runs
exec .venv/bin/jaxrank train --config configs/contrastive/synthetic.py --workdir runs/default "$@"
