#!/usr/bin/env bash
# Remake pretrained/mnist32_cond/ from a training run of the shipped conditional recipe:
#   bash pretrained/remake.sh [DATA_ROOT]       (default: data; MNIST/raw/ under it)
# It trains configs/mnist32_cond.yaml as shipped (15 epochs, seed 0) with one evaluation at the end (the model
# card's figures: it needs the MNIST classifier, trained here first if the cache has none), then exports the EMA
# generator: generator.safetensors, generator.onnx (reading its weights from it), config.yaml, MODEL.md and
# samples.png. tests/test_pretrained.py checks what it wrote, and runs it small (OUT: another folder; TRAIN_ARGS:
# overrides after the script's own).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-pretrained/mnist32_cond}
RUNS=$(mktemp -d)
ls "${DCGAN_CACHE:-$HOME/.cache/dcgan-ddp}"/mnist-classifier-*.pt >/dev/null 2>&1 \
    || "$PY" -m evaluation.classifier --data-root "$DATA"
"$PY" train_ddp.py --config configs/mnist32_cond.yaml data.root="$DATA" train.out_dir="$RUNS" \
    eval.every_epochs=15 eval.metrics=clf_fid,class,coverage,background eval.num_samples=10000 ${TRAIN_ARGS:-}
rm -rf "$OUT"
"$PY" -m dcgan.export --checkpoint "$RUNS/000-mnist32_cond" --out "$OUT"
rm -rf "$RUNS"
du -sh "$OUT"
