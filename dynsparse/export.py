"""Export: one size of a checkpoint as a standalone, fixed-size model that runs without dynsparse.

An export is a directory:

    model.onnx | model.pt    the network at one sparsity, holding only the kept units' weights
                             (ONNX, opset 18; or TorchScript, loaded by `torch.jit.load` or libtorch;
                             or model.safetensors + config.json: a transformers model, `dynsparse.export_hf`)
    model.onnx.data          ONNX weights, only when they pass protobuf's 2 GiB limit
    dynsparse_export.json    format, file, sparsity, per-layer structure, labels, input/output names
    tokenizer files          whatever the tokenizer's `save_pretrained` writes

Both formats take int64 `input_ids` and `attention_mask` (plus `token_type_ids` where the model has
segment embeddings and its tokenizer returns them), each (batch, sequence) with any batch size and
sequence length, and return the task's outputs under transformers' (and optimum's) names:

    text-classification     logits (B, labels)
    token-classification    logits (B, T, labels)
    question-answering      start_logits (B, T), end_logits (B, T)
    feature-extraction      embeddings (B, H): the mask-aware mean, L2-normalised as /v1/embed returns;
                            last_hidden_state (B, T, H)

An ONNX export also holds `config.json` (see `dynsparse.export_hf`), so that optimum's
`ORTModelFor<Task>.from_pretrained(DIR)` loads the directory as it is.
"""

import contextlib
import copy
import importlib.util
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynsparse.errors import InputError
from dynsparse.export_hf import save_onnx_config, save_transformers
from dynsparse.layers import ElasticLayer, UnitRows, take_rows
from dynsparse.masks import Structure
from dynsparse.modeling import ElasticModel
from dynsparse.orderings import check_sparsity

ExportFormat = Literal["onnx", "torch", "transformers"]
FORMATS: tuple[ExportFormat, ...] = ("onnx", "torch", "transformers")
FILES: dict[ExportFormat, str] = {"onnx": "model.onnx", "torch": "model.pt", "transformers": "model.safetensors"}
EXPORT_META = "dynsparse_export.json"
OPSET = 18
EXTRA = "pip install 'dynsparse[export]'"

# Parameters with a head's rows (head_dim rows per head) or a neuron's row on dim 0: what a size slices.
_HEAD_PARAMS = ("q_weight", "q_bias", "k_weight", "k_bias", "v_weight", "v_bias", "attn_out_weight_t")
_NEURON_PARAMS = ("ffn_in_weight", "ffn_in_bias", "ffn_out_weight_t")
_ONNX_PROTOBUF_LIMIT = 1_800_000_000  # bytes; protobuf caps a file at 2 GiB, leave room for the graph
_NOISY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")  # thousands of DEBUG/INFO lines per export
OUTPUTS: dict[str, tuple[str, ...]] = {  # per task, the names transformers' outputs and optimum use
    "text-classification": ("logits",),
    "token-classification": ("logits",),
    "question-answering": ("start_logits", "end_logits"),
    "feature-extraction": ("embeddings", "last_hidden_state"),
}


class FixedSizeModel(nn.Module):
    """One size of an `ElasticModel` as a plain module whose weights hold only the kept units.

    `forward(input_ids, attention_mask, token_type_ids=None)` returns the task's outputs (`OUTPUTS`), equal to
    `model(..., sparsity=s)`'s. Built by `fixed_size`.
    """

    def __init__(self, model: ElasticModel, structure: Structure, language: str | None = None) -> None:
        super().__init__()
        self.language = language  # whose ordering chose the units (None: the shared one)
        self.embeddings = copy.deepcopy(model.embeddings)
        layers = cast(list[ElasticLayer], list(model.layers))  # ModuleList iterates as plain Modules
        self.structure = tuple(hn for hn in structure if hn != (0, 0))  # layers dropped by depth are left out
        rows: list[UnitRows | None] = list(model.unit_rows(language, structure)) if language else [None] * len(layers)
        self.layers = nn.ModuleList(
            _slice_layer(layer, heads, neurons, r)
            for layer, (heads, neurons), r in zip(layers, structure, rows, strict=True)
            if (heads, neurons) != (0, 0)
        )
        self.head = copy.deepcopy(model.head)
        self.task = model.task
        self.output_names = list(OUTPUTS[model.task])
        self.input_names = ["input_ids", "attention_mask"]
        if self.embeddings.token_type is not None and _tokenizer_gives_types(model.tokenizer):
            self.input_names.append("token_type_ids")  # else zeros, as in `ElasticModel` without them

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True attends
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        for layer, (heads, neurons) in zip(self.layers, self.structure, strict=True):
            x = layer(x, mask, heads, neurons)  # slices are the whole (already small) weights
        out = self.head(x, attention_mask)  # the mean pooling skips padding: it needs the mask
        if self.task == "feature-extraction":
            return F.normalize(out, dim=-1), x  # (B, H) as /v1/embed returns, (B, T, H)
        if self.task == "question-answering":
            return out[..., 0].contiguous(), out[..., 1].contiguous()  # (B, T) each, transformers' split
        return out  # (B, C) or (B, T, C)


def fixed_size(
    model: ElasticModel, sparsity: float, depth: int | None = None, language: str | None = None
) -> FixedSizeModel:
    """A standalone copy of `model` at `sparsity` (and `depth` layers) with really smaller weights; `model` is
    left untouched.

    Example:
        >>> small = fixed_size(dynsparse.load("runs/sst2"), 0.5)
        >>> small(ids, mask)                          # == model(ids, mask, sparsity=0.5).logits

    Raises:
        InputError: `sparsity` is not in [0, 1).
    """
    check_sparsity(sparsity)
    language = model.check_language(language)
    return FixedSizeModel(model, model.structure(sparsity, depth, language), language).eval().requires_grad_(False)


def _tokenizer_gives_types(tokenizer: Any) -> bool:
    """Whether the shipped tokenizer returns token_type_ids: the export takes exactly its outputs."""
    return tokenizer is None or "token_type_ids" in getattr(tokenizer, "model_input_names", ["token_type_ids"])


def _slice_layer(layer: ElasticLayer, heads: int, neurons: int, rows: UnitRows | None = None) -> ElasticLayer:
    """The layer's kept units: a prefix, or a language's rows (stored in that order, so the copy is a prefix)."""
    a = heads * layer.head_dim
    kept: dict[str, tuple[int, Tensor | None]] = {
        **dict.fromkeys(_HEAD_PARAMS, (a, rows.heads if rows is not None else None)),
        **dict.fromkeys(_NEURON_PARAMS, (neurons, rows.neurons if rows is not None else None)),
    }
    # Pre-seeding deepcopy's memo puts the kept rows (as the layer's own forward selects them) in place of the
    # full-width parameters, so those are never copied; the clones own fresh storage, never aliasing `model`.
    memo: dict[int, Any] = {
        id(getattr(layer, name)): nn.Parameter(take_rows(getattr(layer, name).detach(), k, idx).clone())
        for name, (k, idx) in kept.items()
    }
    return copy.deepcopy(layer, memo)


def export(
    model: ElasticModel,
    sparsity: float,
    path: str | os.PathLike[str],
    fmt: str = "onnx",
    depth: int | None = None,
    language: str | None = None,
) -> Path:
    """Write `model` at `sparsity` as a standalone export directory at `path`; see the module doc.

    Example:
        >>> export(dynsparse.load("runs/sst2"), 0.5, "exports/sst2-s50", "onnx")
        PosixPath('exports/sst2-s50/model.onnx')

    Args:
        model: the elastic model (any device and dtype; the export is float32 on CPU).
        sparsity: the size to export, in [0, 1).
        path: the output directory, created if missing; files of the same names are replaced.
        fmt: "onnx", "torch" (TorchScript) or "transformers" (`dynsparse.export_hf`).
        depth: keep only this many layers (the checkpoint's depth order); default all.
        language: keep that language's units (a checkpoint with per-language orderings); default the shared ones.

    Returns:
        The path of the model file.

    Raises:
        InputError: a bad sparsity, depth or format, the ONNX packages missing, or `path` not writable.
    """
    if fmt == "onnx":
        return export_onnx(model, sparsity, path, depth, language)
    if fmt == "torch":
        return export_torch(model, sparsity, path, depth, language)
    if fmt == "transformers":
        return export_transformers(model, sparsity, path, depth, language)
    raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def export_onnx(
    model: ElasticModel,
    sparsity: float,
    path: str | os.PathLike[str],
    depth: int | None = None,
    language: str | None = None,
) -> Path:
    """Export `model` at `sparsity` as ONNX (opset 18, dynamic batch and sequence) into directory `path`.

    Raises:
        InputError: a bad sparsity, the `export` extra (onnx, onnxscript) missing, or `path` not writable.
    """
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"ONNX export needs {' and '.join(missing)}: {EXTRA}")
    fixed = fixed_size(model, sparsity, depth, language).to("cpu", torch.float32)
    with _staging(path) as tmp:
        _save_onnx(fixed, tmp / FILES["onnx"], _describe(model, fixed, sparsity, "onnx"))
        save_onnx_config(model, fixed.structure, tmp)  # optimum's ORTModelFor<Task> reads it beside model.onnx
        _save_sidecar(model, fixed, sparsity, "onnx", tmp)
    return Path(path) / FILES["onnx"]


def export_transformers(
    model: ElasticModel,
    sparsity: float,
    path: str | os.PathLike[str],
    depth: int | None = None,
    language: str | None = None,
) -> Path:
    """Export `model` at `sparsity` as a transformers model directory (`dynsparse.export_hf`) at `path`.

    Raises:
        InputError: a bad sparsity, or `path` not writable.
    """
    fixed = fixed_size(model, sparsity, depth, language).to("cpu", torch.float32)
    with _staging(path) as tmp:
        stock = save_transformers(model, fixed, tmp, _max_length(model))
        _save_sidecar(model, fixed, sparsity, "transformers", tmp, {"stock": stock})
    return Path(path) / FILES["transformers"]


def export_torch(
    model: ElasticModel,
    sparsity: float,
    path: str | os.PathLike[str],
    depth: int | None = None,
    language: str | None = None,
) -> Path:
    """Export `model` at `sparsity` as TorchScript (`model.pt`, for `torch.jit.load`) into directory `path`.

    Raises:
        InputError: a bad sparsity, or `path` not writable.
    """
    fixed = fixed_size(model, sparsity, depth, language).to("cpu", torch.float32)
    with _staging(path) as tmp:
        # TorchScript is deprecated in favour of torch.export, but it is what libtorch (C++) and
        # `torch.jit.load` read without the defining code; tracing records shapes symbolically.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
            traced = torch.jit.trace(fixed, _example_inputs(fixed))
        traced.save(str(tmp / FILES["torch"]))
        _save_sidecar(model, fixed, sparsity, "torch", tmp)
    return Path(path) / FILES["torch"]


def _example_inputs(fixed: FixedSizeModel) -> tuple[Tensor, ...]:
    """A (2, 8) batch with padding; both dims > 1 so that neither is specialised to a constant."""
    vocab, pad = fixed.embeddings.word.num_embeddings, fixed.embeddings.pad_token_id
    ids = torch.arange(16).view(2, 8) % vocab  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids = ids.masked_fill(mask == 0, pad)
    return (ids, mask, torch.zeros_like(ids))[: len(fixed.input_names)]


def _save_onnx(fixed: FixedSizeModel, file: Path, description: dict[str, str]) -> None:
    axes = {0: "batch", 1: "sequence"}
    with _quiet_exporter():
        program = torch.onnx.export(
            fixed,
            _example_inputs(fixed),
            input_names=fixed.input_names,
            output_names=fixed.output_names,
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=dict.fromkeys(fixed.input_names, axes),
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export returned no program")
    for node in program.model.graph.all_nodes():  # source paths and stack traces: not for a deployed file
        node.metadata_props.clear()
    program.model.metadata_props.update(description)  # runtimes read it (onnxruntime: custom_metadata_map)
    size = sum(p.numel() * p.element_size() for p in fixed.parameters())
    program.save(file, external_data=size > _ONNX_PROTOBUF_LIMIT)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress logs and internal notices are not for the user; restore levels after."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _describe(model: ElasticModel, fixed: FixedSizeModel, sparsity: float, fmt: ExportFormat) -> dict[str, str]:
    """Key facts as strings, for the ONNX file's own metadata."""
    return {
        "dynsparse.sparsity": str(float(sparsity)),
        "dynsparse.labels": json.dumps(_labels(model)),
        "dynsparse.structure": json.dumps(fixed.structure),
        "dynsparse.format": fmt,
    }


def _labels(model: ElasticModel) -> list[str]:
    return list(model.meta.labels or ()) or [str(i) for i in range(model.shape.num_labels)]


def _max_length(model: ElasticModel) -> int:
    """Tokens a sequence may hold: RoBERTa-style positions start after the padding index, so they allow fewer."""
    shape = model.shape
    return shape.max_positions - (shape.pad_token_id + 1 if model.family.padded_positions else 0)


def _save_sidecar(
    model: ElasticModel,
    fixed: FixedSizeModel,
    sparsity: float,
    fmt: ExportFormat,
    out: Path,
    extra: dict[str, Any] | None = None,
) -> None:
    from dynsparse import __version__

    max_length = _max_length(model)
    meta = {
        "format": fmt,
        "file": FILES[fmt],
        "sparsity": float(sparsity),
        "structure": [list(hn) for hn in fixed.structure],  # per layer kept: [heads, neurons]
        "layers": len(fixed.structure),
        "language": fixed.language,
        "params": sum(p.numel() for p in fixed.parameters()),
        "labels": _labels(model),
        "task": model.meta.task,
        "inputs": fixed.input_names,
        "outputs": fixed.output_names,
        "max_length": max_length,
        "opset": OPSET if fmt == "onnx" else None,
        "family": model.family.name,
        "base_model": model.meta.base_model,
        "dynsparse_version": __version__,
        **(extra or {}),
    }
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
        _portable_tokenizer_config(out / "tokenizer_config.json", fixed.input_names)
    (out / EXPORT_META).write_text(json.dumps(meta, indent=2))


def _portable_tokenizer_config(path: Path, inputs: list[str]) -> None:
    """The tokenizer as runtimes on transformers 4 read it too (optimum-onnx, Infinity): transformers 5 names a
    plain tokenizers-backed tokenizer `TokenizersBackend`, which 4.x lacks (`PreTrainedTokenizerFast` is the same
    class in both), and the tokenizer gives exactly the model's inputs."""
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = inputs
    path.write_text(json.dumps(config, indent=2) + "\n")


@contextlib.contextmanager
def _staging(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder inside the output directory whose files move into place only on success,
    `dynsparse_export.json` last: a failed export never leaves a sidecar describing other weights."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; an export is a directory (model file, tokenizer, {EXPORT_META})")
    tmp = out / f".tmp-export-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == EXPORT_META):
            if f.is_dir() and (out / f.name).is_dir():  # a folder (sentence-transformers' 1_Pooling) replaces one
                shutil.rmtree(out / f.name)
            os.replace(f, out / f.name)
    except OSError as e:
        raise InputError(f"cannot write the export to {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
