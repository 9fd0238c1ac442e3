#!/usr/bin/env bash
# One process per GPU node (all of the node's GPUs), joined with jax.distributed.
# Run the same command on every node, e.g. from Slurm:
#   srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 launch/gpu_multinode.sh \
#       configs/wav2lip_gan.py runs/gan --config.data.dir=/data/lrs2/clip_dataset/1.2.0
# Under Slurm the coordinator is the first node of the job; elsewhere set COORDINATOR
# (host:port), NUM_NODES and NODE_RANK yourself. WORKDIR must be on a filesystem every node
# sees (checkpoints are written collectively). Needs a CUDA build of jax ("jax[cuda12]").
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,8p' "$0"; exit 2
fi
config=$1 workdir=$2
shift 2
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  COORDINATOR=${COORDINATOR:-$first:12345}
  NUM_NODES=${NUM_NODES:-$SLURM_NNODES}
  NODE_RANK=${NODE_RANK:-$SLURM_NODEID}
fi
: "${COORDINATOR:?set COORDINATOR=host:port}" "${NUM_NODES:?set NUM_NODES}" "${NODE_RANK:?set NODE_RANK}"
cd "$(dirname "$0")/.."
JAX_COORDINATOR_ADDRESS=$COORDINATOR JAX_NUM_PROCESSES=$NUM_NODES JAX_PROCESS_ID=$NODE_RANK \
  exec python -m lipsync_jax.train --config "$config" --workdir "$workdir" "$@"
