#!/usr/bin/env bash
# On the GPU machine, as one device call from the repo root after bench/gpu/prepare.sh here:
#   run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=590)
# The carried wheels, same-shape models and a checkpoint made by a few training steps on the GPU, the CUDA
# tests, then the latency, training-cost and serving benchmarks on cuda (issue 5, item 6). Everything lands in
# $OUT (at most 8 files come back): log.txt and each benchmark's JSON and PNG. MODE=quick for a short check;
# DEVICE=cpu MODE=quick runs the same steps here, in the project's environment, to check the script itself.
# BUDGET_S (default 560) bounds the whole run, set-up included.
set -uo pipefail
deadline=$((SECONDS + ${BUDGET_S:-560}))
mode=${MODE:-full}
device=${DEVICE:-cuda}
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
if [ "$device" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
work=/tmp/gpu && rm -rf $work
python3 bench/gpu/make_models.py --tokenizer .whl/tokenizer --out $work || exit 1
# a checkpoint: a few once-for-all steps on the GPU (speed does not depend on the weights' values)
python3 train.py --model_name_or_path $work/minilm --train_file $work/reviews.csv --output_dir $work/ckpt \
  --max_steps 20 --per_device_train_batch_size 32 --max_seq_length 128 --device "$device" || exit 1
quick=""; [ "$mode" = quick ] && quick="--quick"
# each step gets at most CAP seconds and never more than is left before BUDGET_S (the call's limit is 600 s):
# a step cut short still leaves the ones before it, and the log says which was cut
step() {
  local cap=$1; shift
  local left=$((deadline - SECONDS)); [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 5 ]; then echo "!! no time left for: $*"; return; fi
  echo "== ${cap}s: $*"; timeout "$cap" "$@" || echo "!! failed ($?): $*"
}
# one pytest per test package: each has its own conftest; then the benchmarks, the serving one first (item 5)
step 90 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/dynsparse/test_packing.py
step 90 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/service/test_engine.py
step 200 python3 bench/serve_load.py --model $work/ckpt --device "$device" --out "$out/serve_load" $quick
step 150 python3 bench/latency.py --model $work/ckpt --device "$device" --out "$out/latency" $quick
step 90 python3 bench/train_cost.py --model $work/minilm --device "$device" --out "$out/train_cost" $quick
