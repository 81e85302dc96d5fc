#!/usr/bin/env bash
# One process per GPU (`hybridiff launch`, NCCL transport): per-mode generation timings with random weights
# (full-size configs, 1024², fp16). In each launch rank 0 times every run: `none` on rank 0 alone (the baseline of
# the ratios), the other runs with one worker per process.
#   bench/processes.sh HYBRIDIFF_BINARY CONFIGS_DIR [STEPS] > processes.json
# CONFIGS_DIR: ../shared/fixtures/configs (sdxl-unet, sdxl-scheduler, sd3-medium-transformer, sd3-scheduler).
set -euo pipefail
binary=$1 configs=$2 steps=${3:-50}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -ge 2 ] || { echo "bench/processes.sh: needs 2 or more GPUs, $gpus visible" >&2; exit 1; }

bench() {  # processes model scheduler runs...
  local processes=$1 model=$2 scheduler=$3
  shift 3
  local runs=()
  for run in "$@"; do runs+=(--run "$run"); done
  "$binary" launch --nproc "$processes" --master-port 29650 -- bench --model-config "$configs/$model" \
    --scheduler-config "$configs/$scheduler" --device 'cuda:{local_rank}' --steps "$steps" --warmup 1 --dtype fp16 \
    --log-level warn "${runs[@]}"
}

bench 2 sdxl-unet sdxl-scheduler none cfg "hybrid --tau1 13 --tau2 17" hybrid "asyncdiff --model_n 2 --pipeline-warmup 5"
bench 2 sd3-medium-transformer sd3-scheduler none cfg "hybrid --tau1 40 --tau2 45" hybrid \
  "asyncdiff --model_n 2 --pipeline-warmup 5"
if [ "$gpus" -ge 4 ]; then
  bench 4 sdxl-unet sdxl-scheduler none "cfg --workers 4" "hybrid --workers 4 --tau1 13 --tau2 17" \
    "hybrid --workers 4 --branch-stages 1 --tau1 13 --tau2 17" "asyncdiff --model_n 3 --stride 2 --pipeline-warmup 5" \
    "asyncdiff --model_n 4 --pipeline-warmup 5"
  bench 4 sd3-medium-transformer sd3-scheduler none "cfg --workers 4" "hybrid --workers 4 --tau1 40 --tau2 45"
fi
