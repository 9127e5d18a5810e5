#!/usr/bin/env bash
# Every benchmark in full mode, one after another (they time things: run nothing else meanwhile).
#   bash bench/run_all.sh [CKPT] [DEVICE]     # CKPT: a finished run of `python train.py` (runs/default)
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:-runs/default}
device=${2:-$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
out=bench/results/$device
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python bench/latency.py --model "$ckpt" --device "$device" --out "$out/latency"
python bench/switch.py --model "$ckpt" --device "$device" --out "$out/switch"
python bench/train_cost.py --device "$device" --out "$out/train_cost"
python bench/serve_load.py --model "$ckpt" --device "$device" --out "$out/serve_load"
python bench/accuracy.py --checkpoint "$ckpt" --device "$device" --out "$out/accuracy"
