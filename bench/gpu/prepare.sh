#!/usr/bin/env bash
# Here, before the one device call of a session that is lent a GPU: what the GPU machine lacks, into .whl/
# (ignored by .gitignore; the call carries it): wheels for its Python 3.12 of the serving stack and `datasets`, at the
# versions installed here, and the embedded MiniLM's tokenizer files (its weights are too big to carry; the
# benchmarks build same-shape models there, see make_models.py).
#   bash bench/gpu/prepare.sh
# then: run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl/tokenizer
# packages the GPU machine's image lacks (its list: ../.library/device/KINDS.md); the rest it has
names="fastapi starlette uvicorn pydantic pydantic_core pydantic-settings python-dotenv annotated-types
       typing-inspection datasets dill multiprocess"
pins=$(for n in $names; do python -c "import importlib.metadata as m; print('$n==' + m.version('$n'))"; done)
# shellcheck disable=SC2086  # one argument per pin
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $pins
python - <<'PY'
import shutil
from pathlib import Path

from dynsparse.assets.default import default_model_path

for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    src = Path(default_model_path()) / name
    if src.exists():
        shutil.copy(src, Path(".whl/tokenizer") / name)
PY
ls .whl .whl/tokenizer
du -sh .whl
