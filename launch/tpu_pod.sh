#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every worker of TPU VM NAME in ZONE.
#   launch/tpu_pod.sh NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/wav2lip_gan.py gs://bucket/runs/gan \
#       --config.data.dir=gs://bucket/lrs2/clip_dataset/1.2.0
# Assumes this repository is checked out at ~/lipsync_jax on every worker with
# `pip install -e '.[gcs]' "jax[tpu]"` done. On TPU, jax.distributed.initialize() finds the
# other workers by itself; each worker reads its own shard of clips. WORKDIR and the data must
# be places every worker sees: gs:// URLs (the TPU VM's service account), or one folder at the
# same path on all. A SIGTERM (or maintenance notice) on any worker stops all of them at the
# same step with a checkpoint.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,11p' "$0"; exit 2
fi
name=$1 zone=$2 config=$3 workdir=$4
shift 4
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
  "cd ~/lipsync_jax && LIPSYNC_JAX_DISTRIBUTED=auto python -m lipsync_jax.train --config $(printf %q "$config") --workdir $(printf %q "$workdir")$args"
