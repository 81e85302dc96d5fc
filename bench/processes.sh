#!/usr/bin/env bash
# One process per GPU (`hybridiff launch`, NCCL transport): end-to-end generation times per schedule (text
# encoding, 50 steps, VAE decode) of whole diffusers folders, on 2 GPUs and, where there are 4, on 4.
# In each launch rank 0 times every run: the runs of one worker stay on rank 0 (the first, `none` with CUDA
# graphs, is the baseline of the ratios: our best one-GPU time), the others put one worker on each process.
#   bench/processes.sh HYBRIDIFF_BINARY SDXL_FOLDER SD3_FOLDER [STEPS] [PROCESS_COUNTS] > processes.json
# A folder given as - skips that model. PROCESS_COUNTS: "2 4" (default; 4 only where 4 GPUs are visible), or one of
# them.
# The folders: bench/random_model.py writes full-size ones with random weights (speed does not depend on them).
# Inside --run the schedule flags are spelled as in generate. Results: docs/benchmarks.md.
set -euo pipefail
binary=$1 sdxl=$2 sd3=$3 steps=${4:-50} counts=${5:-2 4}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -ge 2 ] || { echo "bench/processes.sh: needs 2 or more GPUs, $gpus visible" >&2; exit 1; }

bench() {  # processes folder runs...
  local processes=$1 folder=$2
  shift 2
  [ "$folder" != - ] || return 0
  local runs=()
  for run in "$@"; do runs+=(--run "$run"); done
  "$binary" launch --nproc "$processes" --master-port 29650 -- bench --model "$folder" --device 'cuda:{local_rank}' \
    --steps "$steps" --warmup 1 --dtype fp16 --log-level warn "${runs[@]}"
}

# The reference scripts' windows: SDXL detects around steps 13-17, SD3 (tau_cap 40) around 40-45.
if [[ " $counts " == *" 2 "* ]]; then
  bench 2 "$sdxl" "none --cuda-graphs" none "cfg --cuda-graphs" "hybrid --tau1 13 --tau2 17 --cuda-graphs" \
    "hybrid --cuda-graphs" "asyncdiff --model_n 2 --warmup 5 --cuda-graphs"
  bench 2 "$sd3" "none --cuda-graphs" none "cfg --cuda-graphs" "hybrid --tau1 40 --tau2 45 --cuda-graphs" \
    "hybrid --cuda-graphs" "asyncdiff --model_n 2 --warmup 5 --cuda-graphs"
fi
if [[ " $counts " == *" 4 "* ]] && [ "$gpus" -ge 4 ]; then
  bench 4 "$sdxl" "none --cuda-graphs" "cfg --workers 4 --cuda-graphs" "hybrid --workers 4 --tau1 13 --tau2 17 --cuda-graphs" \
    "hybrid --workers 4 --cuda-graphs" "hybrid --workers 4 --branch-stages 1 --tau1 13 --tau2 17 --cuda-graphs" \
    "asyncdiff --model_n 3 --stride 2 --warmup 5 --cuda-graphs" \
    "asyncdiff --model_n 4 --warmup 5 --cuda-graphs"
  bench 4 "$sd3" "none --cuda-graphs" "cfg --workers 4 --cuda-graphs" "hybrid --workers 4 --tau1 40 --tau2 45 --cuda-graphs" \
    "hybrid --workers 4 --cuda-graphs" "asyncdiff --model_n 3 --stride 2 --warmup 5 --cuda-graphs" \
    "asyncdiff --model_n 4 --warmup 5 --cuda-graphs"
fi
