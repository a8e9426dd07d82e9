#!/usr/bin/env bash
# torchrun launcher for one node or several (static rendezvous: node N holds ranks N*NPROC_PER_NODE ...).
# Arguments go to train_ddp.py.
#
#   one node, all GPUs:   bash launch/torchrun.sh --config configs/mnist64.yaml train.mixed_precision=fp16
#   one node, 2 CPU procs: NPROC_PER_NODE=2 bash launch/torchrun.sh --config configs/mnist32.yaml
#   two nodes (run on each, NODE_RANK 0 and 1):
#       NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 bash launch/torchrun.sh ...
#
# NPROC_PER_NODE defaults to the number of visible GPUs (1 when there is none). Under SLURM, NODE_RANK defaults to
# the node's own $SLURM_NODEID (see slurm/train.sbatch). PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
NNODES=${NNODES:-1}
if [[ "$NNODES" == 1 ]]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC_PER_NODE" train_ddp.py "$@"
fi
: "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-}}
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}" \
  --nproc_per_node "$NPROC_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  train_ddp.py "$@"
