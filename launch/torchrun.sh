#!/usr/bin/env bash
# torchrun launcher for one node or several. Arguments go to train_ddp.py.
#
#   one node, all GPUs:   bash launch/torchrun.sh --config configs/mnist64.yaml train.mixed_precision=fp16
#   one node, 2 CPU procs: NPROC_PER_NODE=2 bash launch/torchrun.sh --config configs/mnist32.yaml
#   two nodes (run on each, NODE_RANK 0 and 1):
#       NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 bash launch/torchrun.sh ...
#
# NPROC_PER_NODE defaults to the number of visible GPUs (1 when there is none).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
NNODES=${NNODES:-1}
if [[ "$NNODES" == 1 ]]; then
  exec torchrun --standalone --nproc_per_node "$NPROC_PER_NODE" train_ddp.py "$@"
fi
: "${MASTER_ADDR:?set MASTER_ADDR to the first node's address}"
exec torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}" \
  --nproc_per_node "$NPROC_PER_NODE" --rdzv_id "${RDZV_ID:-dcgan}" --rdzv_backend c10d \
  --rdzv_endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" train_ddp.py "$@"
