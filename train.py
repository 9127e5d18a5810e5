#!/usr/bin/env python
"""Once-for-all Dynamic Sparsification training (same as `dynsparse train`).

    python train.py                       # the embedded default: MiniLM-L6 on Rotten Tomatoes
    python train.py --model_name_or_path xlm-roberta-base --train_file train.csv \
        --validation_file dev.csv --output_dir runs/xlmr --max_steps 2000
"""

from dynsparse.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
