#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md, stage by stage; each stage fits in ~10 minutes on one H100/H200.
#
#   DATA=/path/to/data INCEPTION=/path/weights-inception-2015-12-05-6726825d.pth OUT=bench-out \
#       bash bench/gpu_suite.sh tests speed profile grid compile batches quality study
#
# DATA holds MNIST/raw/ (torchvision layout); INCEPTION is torch-fidelity's FID Inception weights (needed by
# `quality` and `study`; a float16 copy also loads). Each stage prints its figures and keeps a log in
# $OUT/<stage>.log; the quality and study runs' directories go to $RUNS (default $OUT/runs).
#   tests    the CUDA tests (fp16 loss scaling, the penalized recipe in fp16, CUDA RNG across resume, CUDA-graph
#            steps vs eager steps, SyncBatchNorm on 2 processes)
#   speed    ours vs the canonical DCGAN loop, 64x64, batch 128, fp16: `ratio ours/reference`
#   profile  GPU busy vs wall time per step at batch 128, eager and as a CUDA graph (is the step launch-bound?)
#   grid     fp32/fp16/bf16 x speed options at batch 128: img/s, TFLOP/s, peak memory
#   compile  fp16, batch 128, torch.compile (channels_last off: PyTorch issue 171622) without and with
#            CUDA graphs (slow to start: its own stage)
#   batches  fp16 at larger batches, eager and graphed, for the fraction of peak at the best batch size
#   quality  time to quality: fp16 training until Inception FID <= 10 ($QUALITY_SAMPLES samples, default 10000,
#            vs MNIST test; their background gap beside it), at most $QUALITY_EPOCHS epochs (default 15), evaluating
#            every $QUALITY_EVERY epochs (default 1); $QUALITY_ARGS: more config overrides (e.g.
#            loss.label_smoothing=false). The last sample grids of G and its EMA are copied to $OUT.
#   study    a study's members side by side on this GPU ($STUDY, default configs/experiments/recipe64_gpu.yaml;
#            $STUDY_PARALLEL members at a time, default all; $STUDY_ARGS: overrides for every member), stopped
#            after $STUDY_SECONDS (default 480) as a preemption stops them (each writes a checkpoint: the same
#            stage again on the same machine resumes them); its report (table, curves, grids) goes to $OUT either way
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA:?set DATA to the folder holding MNIST/raw/}
OUT=${OUT:-bench-gpu-$(date +%Y%m%d-%H%M%S)}
RUNS=${RUNS:-$OUT/runs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# The quality run's last sample grids (raw G, EMA, real | EMA) into $OUT: its checkpoints are too big to fetch
# from a device machine, and the grids tell a background or contrast problem at a glance.
keep_last_grids() {
    local kind
    for kind in generator ema real_vs_fake; do
        cp "$(ls "$RUNS"/*/samples/samples_$kind-*.png | tail -1)" "$OUT/" || return 1
    done
}

# The study stage: members in $RUNS/<study>/, time-boxed by `timeout` (SIGTERM: experiments.run stops its members
# the way SLURM's preemption does), then `experiments.report` on whatever they reached.
run_study() {
    local study=${STUDY:-configs/experiments/recipe64_gpu.yaml} members folder status file
    local settings=(data.root="$DATA" data.download=false train.out_dir="$RUNS"
                    eval.inception_weights="${INCEPTION:?set INCEPTION for the study stage}" ${STUDY_ARGS:-})
    members=$($PY -m experiments.run "$study" "${settings[@]}" --list) || return 1   # index, name, run dir
    folder=$(dirname "$(head -1 <<<"$members" | cut -f3)")
    timeout -k 60 "${STUDY_SECONDS:-480}" $PY -m experiments.run "$study" "${settings[@]}" --no-report \
        --parallel "${STUDY_PARALLEL:-$(wc -l <<<"$members")}"
    status=$?
    $PY -m experiments.report "$folder" --target 10 || return 1
    for file in report.md report.json quality.png samples.png; do
        [ ! -f "$folder/$file" ] || cp "$folder/$file" "$OUT/" || return 1
    done
    cat "$folder/report.md"
    return $status
}

run_stage() {
    local stage=$1
    echo "=== $stage: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    case $stage in
        tests)   $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py ;;
        speed)   $PY -m bench.speed --data-root "$DATA" ;;
        profile) $PY -m bench.profile_step --precision fp16 --batch-size 128 --no-cuda-graphs --rows 12 \
                 && $PY -m bench.profile_step --precision fp16 --batch-size 128 --rows 12 ;;
        grid)    $PY -m bench.speed --grid --precisions fp32,fp16,bf16 --batch-sizes 128 --seconds 2 \
                     --grid-options "plain,channels_last+fused,channels_last+fused+cuda_graphs" ;;
        compile) $PY -m bench.speed --grid --precisions fp16 --batch-sizes 128 --seconds 2 \
                     --grid-options "fused+compile,fused+compile+cuda_graphs" ;;
        batches) $PY -m bench.speed --grid --precisions fp16 --batch-sizes 256,512,1024,2048 --seconds 2 \
                     --grid-options "channels_last+fused,channels_last+fused+cuda_graphs" ;;
        quality) $PY train_ddp.py --config configs/mnist64.yaml data.root="$DATA" data.download=false \
                     train.out_dir="$RUNS" train.mixed_precision=fp16 train.epochs="${QUALITY_EPOCHS:-15}" \
                     eval.every_epochs="${QUALITY_EVERY:-1}" eval.num_samples="${QUALITY_SAMPLES:-10000}" \
                     eval.metrics=fid,background eval.best_metric=fid eval.target=10 \
                     eval.inception_weights="${INCEPTION:?set INCEPTION for the quality stage}" ${QUALITY_ARGS:-} \
                 && grep -h -E "eval step|early stopping|done:" "$RUNS"/*/train.log && keep_last_grids ;;
        study)   run_study ;;
        *)       echo "unknown stage '$stage': use tests speed profile grid compile batches quality study"; return 2 ;;
    esac
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch, torchvision, accelerate; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'accelerate', accelerate.__version__)" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
status=0
for stage in "$@"; do
    run_stage "$stage" 2>&1 | tee "$OUT/$stage.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status
