#!/usr/bin/env bash
# Per-mode generation timings with random weights (full-size configs, 1024², fp16), every worker in one process.
# One process per model runs every schedule (the first run, mode none on one GPU, is the baseline of the ratios);
# workers run in that process, each on its own GPU when there are two or more.
#   bench/modes.sh HYBRIDIFF_BINARY CONFIGS_DIR [STEPS] > modes.json
# CONFIGS_DIR: the fixtures' configs folder, ../shared/fixtures/configs beside the checkout (sdxl-unet, sdxl-scheduler,
# sd3-medium-transformer, sd3-scheduler). Inside --run the schedule flags are spelled as in generate.
set -euo pipefail
binary=$1 configs=$2 steps=${3:-50}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -ge 1 ] || { echo "bench/modes.sh: no GPU visible" >&2; exit 1; }
if [ "$gpus" -ge 2 ]; then two=cuda:0,cuda:1 four=cuda:0,cuda:0,cuda:1,cuda:1; else two=cuda:0,cuda:0 four=cuda:0,cuda:0,cuda:0,cuda:0; fi

bench() {  # model scheduler runs...
  local model=$1 scheduler=$2
  shift 2
  local runs=()
  for run in "$@"; do runs+=(--run "$run"); done
  "$binary" bench --model-config "$configs/$model" --scheduler-config "$configs/$scheduler" --steps "$steps" \
    --warmup 1 --dtype fp16 --log-level warn "${runs[@]}"
}

bench sdxl-unet sdxl-scheduler "none --devices cuda:0" "cfg --devices $two" \
  "hybrid --tau1 13 --tau2 17 --devices $two" "hybrid --devices $two" \
  "asyncdiff --model_n 2 --warmup 5 --devices $two" \
  "hybrid --workers 4 --tau1 13 --tau2 17 --devices $four" \
  "hybrid --workers 4 --branch-stages 1 --tau1 13 --tau2 17 --devices $four" \
  "cfg --workers 4 --devices $four" \
  "asyncdiff --model_n 3 --stride 2 --warmup 5 --devices $four"
bench sd3-medium-transformer sd3-scheduler "none --devices cuda:0" "cfg --devices $two" \
  "hybrid --tau1 40 --tau2 45 --devices $two" "hybrid --workers 4 --tau1 40 --tau2 45 --devices $four"
