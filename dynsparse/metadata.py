"""dynsparse.json as one frozen, typed record: `CheckpointMeta`.

The file may come from anyone, so `CheckpointMeta.from_json` checks every field's type before it builds the
record, and each record validates itself in `__post_init__`; a bad field is one `CheckpointError` naming the
file. `CheckpointMeta.to_json` is the one writer: its key order is the order a trained checkpoint has always
had, so a file read and written again is the same bytes, and keys this version does not know are kept.

Example:
    >>> meta = CheckpointMeta.from_json(json.loads(text), path)
    >>> meta.sparsity_range, meta.ordering.estimator
    ((0.0, 0.9), 'taylor')
    >>> model.meta = replace(model.meta, main_metric="f1")  # records are replaced, never edited
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dynsparse.errors import CheckpointError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
ALLOCATIONS = ("uniform", "global")
_SCORES = ["head_scores", "neuron_scores"]
_LANGUAGE_SCORES = ["language_head_scores", "language_neuron_scores"]
_KNOWN = (
    "task",
    "base_model",
    "labels",
    "main_metric",
    "columns",
    "ordering",
    "depth",
    "sparsity_range",
    "levels",
    "level_info",
    "training",
    "format_version",
    "family",
    "model_type",
    "allocation",
    "files",
    "vocabulary",
)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass(frozen=True)
class Columns:
    """The data columns a model was trained on (the CLI's defaults when it evaluates the checkpoint)."""

    text: str | None = None
    pair: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Ordering:
    """How the stored unit order was found; `languages` names the extra per-language orderings (non-shared)."""

    estimator: str = "natural"
    mode: str = "once-for-all"
    languages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        langs = self.languages
        if (
            not isinstance(langs, tuple)
            or len(langs) > 256
            or len(set(langs)) != len(langs)
            or not all(isinstance(x, str) and 0 < len(x) <= 64 for x in langs)
        ):
            raise ValueError(f"ordering.languages must be up to 256 distinct names, got {list(langs)!r:.100}")


@dataclass(frozen=True)
class Depth:
    """Elastic depth: `order` ranks the layers most important first; `min_layers` is the least trained."""

    min_layers: int | None = None
    order: tuple[int, ...] | None = None
    rule: str | None = None

    def __post_init__(self) -> None:
        if self.min_layers is not None and (type(self.min_layers) is not int or self.min_layers < 1):
            raise ValueError(f"depth.min_layers must be a positive integer, got {self.min_layers!r:.50}")
        if self.order is not None and not all(type(i) is int for i in self.order):
            raise ValueError(f"depth.order must be a list of layer numbers, got {list(self.order)!r:.100}")

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items() if v is not None}

    def check_layers(self, layers: int) -> None:
        """Raise `ValueError` unless the order ranks each of `layers` once and min_layers is within them."""
        if self.order is not None and sorted(self.order) != list(range(layers)):
            raise ValueError(f"depth.order must rank each of the {layers} layers once, got {list(self.order)!r:.100}")
        if self.min_layers is not None and not 1 <= self.min_layers <= layers:
            raise ValueError(f"depth.min_layers must be an integer from 1 to {layers}, got {self.min_layers!r:.50}")


@dataclass(frozen=True)
class Vocabulary:
    """Vocabulary pruning: the word matrix keeps `kept` of the tokenizer's `original` tokens."""

    original: int
    kept: int

    def __post_init__(self) -> None:
        if not all(type(x) is int for x in (self.original, self.kept)) or not 1 <= self.kept <= self.original:
            raise ValueError(f"vocabulary.kept must be an integer from 1 to original, got {self.kept!r:.50}")


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything dynsparse.json holds. `family`, `model_type`, `allocation` and `files` describe the stored
    weights: the model fills the first three, `to_json` the checksum."""

    task: str = "text-classification"
    base_model: str | None = None
    labels: tuple[str, ...] | None = None  # None: not recorded yet ("0", "1", ... by default)
    main_metric: str | None = None
    columns: Columns | None = None
    ordering: Ordering = field(default_factory=Ordering)
    depth: Depth | None = None
    sparsity_range: tuple[float, float] = (0.0, 0.9)  # the trained range
    levels: tuple[Mapping[str, Any], ...] = ()  # the served size table: one row of costs/metrics per sparsity
    level_info: Mapping[str, Any] | None = None  # what the level table was measured on
    training: Mapping[str, Any] | None = None  # the run's summary and arguments
    format_version: int = FORMAT_VERSION
    family: str | None = None
    model_type: str | None = None
    allocation: str = "uniform"
    files: Mapping[str, Any] = field(default_factory=dict)  # {"model.safetensors": {"sha256": ...}}
    vocabulary: Vocabulary | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"unknown format_version {self.format_version!r:.50} (this dynsparse reads 1)")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be 'uniform' or 'global', got {self.allocation!r:.50}")
        if self.labels is not None and not all(isinstance(x, str) for x in self.labels):
            raise ValueError("labels must be a list of strings")
        rng = self.sparsity_range
        if len(rng) != 2 or not all(_is_number(x) for x in rng) or not 0 <= rng[0] < rng[1] < 1:
            raise ValueError(f"sparsity_range must be [min, max] with 0 <= min < max < 1, got {list(rng)!r:.100}")
        for row in self.levels:
            s = row.get("sparsity", 0.0) if isinstance(row, Mapping) else None
            if not _is_number(s) or not 0 <= s < 1:
                raise ValueError(f"levels must be objects with a sparsity in [0, 1), got {row!r:.100}")

    @property
    def weights_sha256(self) -> str | None:
        entry = self.files.get(WEIGHTS_FILE)
        return entry.get("sha256") if isinstance(entry, Mapping) else None

    @property
    def max_seq_length(self) -> int | None:
        """The sequence length the checkpoint was trained at, when the run recorded it."""
        length = ((self.training or {}).get("args") or {}).get("max_seq_length")
        return length if type(length) is int else None

    def with_languages(self, languages: list[str]) -> "CheckpointMeta":
        return replace(self, ordering=replace(self.ordering, languages=tuple(languages)))

    def with_depth(self, **fields: Any) -> "CheckpointMeta":
        return replace(self, depth=replace(self.depth or Depth(), **fields))

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "CheckpointMeta":
        """The record of a parsed dynsparse.json; any bad field is a `CheckpointError` naming `path`."""
        try:
            return cls(**_fields(data))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: {str(e)[:300]}") from None

    def to_json(self, weights_sha256: str | None = None) -> dict[str, Any]:
        """The JSON object of dynsparse.json (the one writer); `weights_sha256` replaces the recorded checksum."""
        files = {**self.files, WEIGHTS_FILE: {"sha256": weights_sha256}} if weights_sha256 else dict(self.files)
        ordering: dict[str, Any] = {"stored": "prefix", "scores": _SCORES}
        ordering |= {"estimator": self.ordering.estimator, "mode": self.ordering.mode}
        if self.ordering.languages:  # the non-shared setting: one more ordering per language
            ordering |= {"languages": list(self.ordering.languages), "language_scores": _LANGUAGE_SCORES}
        values: dict[str, Any] = {
            "task": self.task,
            "base_model": self.base_model,
            "labels": list(self.labels or ()),
            "main_metric": self.main_metric,
            "columns": vars(self.columns) if self.columns else None,
            "ordering": ordering,
            "depth": self.depth.to_json() if self.depth else None,
            "sparsity_range": list(self.sparsity_range),
            "levels": [dict(r) for r in self.levels],
            "level_info": self.level_info,
            "training": self.training,
            "format_version": self.format_version,
            "family": self.family,
            "model_type": self.model_type,
            "allocation": self.allocation,
            "files": files,
            "vocabulary": vars(self.vocabulary) if self.vocabulary else None,
        }
        optional = ("base_model", "main_metric", "columns", "depth", "level_info", "training", "vocabulary")
        out = {k: v for k, v in values.items() if v is not None or k not in optional}
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], name: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"field {key!r} is missing or not a {name}")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], name: str) -> Any:
    return None if data.get(key) is None else _need(data, key, kind, name)


def _fields(data: Any) -> dict[str, Any]:
    """Constructor arguments from a parsed dynsparse.json, every type checked (the values by the records)."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(f"unknown format_version {version!r:.50} (this dynsparse reads {FORMAT_VERSION})")
    levels = _need(data, "levels", list, "list")
    files = _need(data, "files", dict, "dict")
    if not isinstance(files.get(WEIGHTS_FILE), dict) or not isinstance(files[WEIGHTS_FILE].get("sha256"), str):
        raise ValueError(f"files.{WEIGHTS_FILE}.sha256 is missing")
    return {
        "task": _need(data, "task", str, "str") if "task" in data else "text-classification",
        "base_model": _optional(data, "base_model", str, "str"),
        "labels": tuple(_need(data, "labels", list, "list")),
        "main_metric": _optional(data, "main_metric", str, "str"),
        "columns": _columns(_optional(data, "columns", dict, "dict")),
        "ordering": _ordering(data.get("ordering")),
        "depth": _depth(data.get("depth")),
        "sparsity_range": tuple(_need(data, "sparsity_range", list, "list")),
        "levels": tuple(levels),
        "level_info": _optional(data, "level_info", dict, "dict"),
        "training": _optional(data, "training", dict, "dict"),
        "format_version": version,
        "family": _need(data, "family", str, "str"),
        "model_type": _optional(data, "model_type", str, "str"),
        "allocation": _need(data, "allocation", str, "str"),
        "files": files,
        "vocabulary": _vocabulary(data.get("vocabulary")),
        "extra": {k: v for k, v in data.items() if k not in _KNOWN},
    }


def _columns(raw: dict[str, Any] | None) -> Columns | None:
    if raw is None:
        return None
    if not all(raw.get(k) is None or isinstance(raw[k], str) for k in ("text", "pair", "label")):
        raise ValueError(f"columns must map text, pair and label to column names, got {raw!r:.100}")
    return Columns(raw.get("text"), raw.get("pair"), raw.get("label"))


def _ordering(raw: Any) -> Ordering:
    if raw is None:
        return Ordering()
    if not isinstance(raw, dict):
        raise ValueError(f"ordering must be an object, got {type(raw).__name__}")
    langs = raw.get("languages") or []
    if not isinstance(langs, list):
        raise ValueError(f"ordering.languages must be up to 256 distinct names, got {langs!r:.100}")
    estimator, mode = raw.get("estimator", "natural"), raw.get("mode", "once-for-all")
    if not isinstance(estimator, str) or not isinstance(mode, str):
        raise ValueError(f"ordering.estimator and ordering.mode must be names, got {estimator!r:.50}, {mode!r:.50}")
    return Ordering(estimator, mode, tuple(langs))


def _depth(raw: Any) -> Depth | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"depth must be an object, got {type(raw).__name__}")
    order, rule = raw.get("order"), raw.get("rule")
    if order is not None and not isinstance(order, list):
        raise ValueError(f"depth.order must be a list of layer numbers, got {order!r:.100}")
    if rule is not None and not isinstance(rule, str):
        raise ValueError(f"depth.rule must be a name, got {rule!r:.50}")
    return Depth(raw.get("min_layers"), None if order is None else tuple(order), rule)


def _vocabulary(raw: Any) -> Vocabulary | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"vocabulary must be an object, got {type(raw).__name__}")
    return Vocabulary(raw.get("original"), raw.get("kept"))  # type: ignore[arg-type]
