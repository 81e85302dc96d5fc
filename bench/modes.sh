#!/usr/bin/env bash
# Per-mode generation timings with random weights (full-size configs, 1024², fp16), one JSON object per run:
# the README's "Per-mode step times" tables. Workers run in one process; with 2+ GPUs each worker gets its own.
#   bench/modes.sh HYBRIDIFF_BINARY CONFIGS_DIR [STEPS] > modes.jsonl
# CONFIGS_DIR: ../shared/fixtures/configs (sdxl-unet, sdxl-scheduler, sd3-medium-transformer, sd3-scheduler).
set -euo pipefail
binary=$1 configs=$2 steps=${3:-50}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -ge 1 ] || { echo "bench/modes.sh: no GPU visible" >&2; exit 1; }
if [ "$gpus" -ge 2 ]; then two=cuda:0,cuda:1 four=cuda:0,cuda:0,cuda:1,cuda:1; else two=cuda:0,cuda:0 four=cuda:0,cuda:0,cuda:0,cuda:0; fi

run() {  # model scheduler label flags...
  local model=$1 scheduler=$2 label=$3
  shift 3
  "$binary" bench --model-config "$configs/$model" --scheduler-config "$configs/$scheduler" --steps "$steps" \
    --warmup 1 --dtype fp16 --log-level warn "$@" | python3 -c '
import json, sys
report = json.load(sys.stdin)
report["label"] = sys.argv[1]
print(json.dumps(report))' "$label"
}

sdxl() { run sdxl-unet sdxl-scheduler "$@"; }
sd3() { run sd3-medium-transformer sd3-scheduler "$@"; }

sdxl "sdxl none" --parallel none --devices cuda:0
sdxl "sdxl cfg 2" --parallel cfg --devices "$two"
sdxl "sdxl hybrid 2 window 13-17" --parallel hybrid --tau1 13 --tau2 17 --devices "$two"
sdxl "sdxl hybrid 2 slope" --parallel hybrid --devices "$two"
sdxl "sdxl asyncdiff n2 warmup 5" --parallel asyncdiff --model_n 2 --pipeline-warmup 5 --devices "$two"
sdxl "sdxl hybrid 4 split branches window 13-17" --parallel hybrid --workers 4 --tau1 13 --tau2 17 --devices "$four"
sdxl "sdxl hybrid 4 whole branches window 13-17" --parallel hybrid --workers 4 --branch-stages 1 --tau1 13 --tau2 17 \
  --devices "$four"
sdxl "sdxl cfg 4 split branches" --parallel cfg --workers 4 --devices "$four"
sdxl "sdxl asyncdiff n3 stride 2 warmup 5" --parallel asyncdiff --model_n 3 --stride 2 --pipeline-warmup 5 --devices "$four"
sd3 "sd3 none" --parallel none --devices cuda:0
sd3 "sd3 cfg 2" --parallel cfg --devices "$two"
sd3 "sd3 hybrid 2 window 40-45" --parallel hybrid --tau1 40 --tau2 45 --devices "$two"
