"""Configuration dataclasses. Config flows downward: `train.py` builds these and passes sub-configs on.

Field names follow transformers' `run_glue.py` / `TrainingArguments` where they overlap, so the
same flags work (`--model_name_or_path`, `--per_device_train_batch_size`, ...). The dataclasses
double as the command-line schema (transformers' `HfArgumentParser` turns fields into flags).
"""

from dataclasses import dataclass, field
from typing import Literal

Allocation = Literal["uniform", "global"]
ImportanceMethod = Literal["taylor", "learned", "magnitude", "natural"]
Mode = Literal["once-for-all", "one-shot", "fine-tune"]
LayerOrder = Literal["every-other", "top", "taylor"]


@dataclass(frozen=True)
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "transformers checkpoint (path or hub id); default: the embedded MiniLM"}
    )
    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "fixed teacher for distillation; default: in-place (the dense forward)"}
    )


@dataclass(frozen=True)
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": "csv/json/jsonl (or a datasets hub name)"})
    validation_file: str | None = field(default=None, metadata={"help": "csv/json/jsonl (or a datasets hub name)"})
    task: str = field(
        default="text-classification",
        metadata={"help": "a transformers pipeline task name (dynsparse.tasks.TASKS)"},
    )
    text_column: str | None = field(
        default=None, metadata={"help": "default: text/sentence/sentence1; tokens; question; sentence1 (by task)"}
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "default: sentence2 when present; context (QA); sentence2 (embeddings)"}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "default: label; ner_tags/pos_tags/tags (tokens); answers (QA)"}
    )
    max_seq_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self) -> None:
        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be >= 8, got {self.max_seq_length}")


@dataclass(frozen=True)
class SparsityArguments:
    min_sparsity: float = field(default=0.0, metadata={"help": "dense end of the range trained"})
    max_sparsity: float = field(default=0.9, metadata={"help": "smallest model trained"})
    sizes_per_step: int = field(default=4, metadata={"help": "sandwich rule: dense + smallest + random ones"})
    allocation: Allocation = field(default="uniform", metadata={"help": "uniform per layer, or global by cost"})
    importance: ImportanceMethod = field(
        default="taylor",
        metadata={"help": "taylor (accumulated |m*dL/dm|), learned (L1-pulled gates), magnitude, or natural order"},
    )
    mode: Mode = field(
        default="once-for-all",
        metadata={
            "help": "one-shot: only order the units of a fine-tuned model, no weight updates; fine-tune: plain "
            "dense fine-tuning, units ordered at the end (both are baselines)"
        },
    )
    orderings: Literal["shared", "per-language"] = field(
        default="shared",
        metadata={
            "help": "per-language: also one ordering per language of the training data (the non-shared "
            "setting), stored in the same checkpoint and chosen by the request's language"
        },
    )
    min_depth: int = field(
        default=0, metadata={"help": "elastic depth: also train depths down to this many layers (0: all layers)"}
    )
    layer_order: LayerOrder = field(
        default="every-other",
        metadata={"help": "which layers depth drops first: every-other (DynaBERT), top, or taylor (gate importance)"},
    )
    importance_ratio: float = field(
        default=0.1, metadata={"help": "share of steps that train dense and estimate importance before rewiring"}
    )
    distill_alpha: float = field(default=0.5, metadata={"help": "weight of distillation vs task loss for sub-sizes"})
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_sparsity < self.max_sparsity < 1.0:
            raise ValueError(
                f"need 0 <= min_sparsity < max_sparsity < 1, got {self.min_sparsity} and {self.max_sparsity}"
            )
        if self.sizes_per_step < 2:
            raise ValueError(f"--sizes_per_step must be >= 2 (dense and smallest), got {self.sizes_per_step}")
        if not 0.0 <= self.importance_ratio < 1.0:
            raise ValueError(f"--importance_ratio must be in [0, 1), got {self.importance_ratio}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"--distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.orderings == "per-language" and self.importance != "taylor":
            raise ValueError("--orderings per-language needs --importance taylor (scored per language from data)")
        if self.min_depth < 0:
            raise ValueError(f"--min_depth must be >= 0 (0: depth not elastic), got {self.min_depth}")
        if self.layer_order == "taylor" and self.importance not in ("taylor", "learned"):
            raise ValueError("--layer_order taylor needs --importance taylor or learned (an importance phase)")
        if self.distill_temperature <= 0:
            raise ValueError(f"--distill_temperature must be > 0, got {self.distill_temperature}")


@dataclass(frozen=True)
class TrainArguments:
    output_dir: str = "runs/default"
    overwrite_output_dir: bool = False
    max_steps: int = field(default=-1, metadata={"help": "> 0 overrides --num_train_epochs"})
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 42
    logging_steps: int = 10
    eval_steps: int = field(default=0, metadata={"help": "evaluate dense and smallest every N steps (0: at end)"})
    save_steps: int = field(default=0, metadata={"help": "keep a training state every N steps (0: none)"})
    save_total_limit: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "checkpoint-STEP dir or 'latest'"})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={"help": "autocast on GPU"})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when present)"})
    eval_levels: int | None = field(
        default=None,
        metadata={"help": "at most this many levels in the final table, thinned evenly (default: every level)"},
    )

    def __post_init__(self) -> None:
        positive = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"]
        positive += ["eval_levels"] if self.eval_levels is not None else []
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("need --max_steps > 0 or --num_train_epochs > 0")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
