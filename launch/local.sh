#!/usr/bin/env bash
# Train on this machine (all local devices: CPU, one or more GPUs, or a TPU VM).
#   launch/local.sh CONFIG WORKDIR [--config.x=y ...]
#   launch/local.sh configs/expert.py:tiny runs/expert --config.data.dir=data/pre/clip_dataset/1.2.0
# Rerunning the same command resumes from WORKDIR/checkpoints.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,5p' "$0"; exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
exec python -m lipsync_jax.train --config "$config" --workdir "$workdir" "$@"
