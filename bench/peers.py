"""Against other runtimes: dynsparse at every level vs transformers, ONNX Runtime and OpenVINO, in one run.

For each batch x length shape, every contender is timed once per round, rounds interleaved (machine noise hits
all alike), 2 threads each, medians:
- dynsparse at every level, float32 eager and as traced graphs (`dynsparse.graphs`, what `dynsparse serve` runs on
  CPU), and the `auto` dtype (`dynsparse.precision`; timed once when they agree);
- on the dense model: transformers (sdpa), ONNX Runtime fp32, OpenVINO fp32 and at its default precision
  (reduced where the CPU has bf16 instructions: `INFERENCE_PRECISION_HINT`);
- on dynsparse's own ONNX export of each level (`dynsparse export --format onnx`): ONNX Runtime fp32, OpenVINO
  fp32 and default precision, and ONNX Runtime dynamic int8 (weights int8, activations quantised per call).
Quality of each contender against fp32 dynsparse on real padded sentences (Rotten Tomatoes snippets): dense
peers on the mean-pooled encoder output (cosine, max abs diff), exports on the logits (cosine, max abs diff,
argmax agreement).

    python bench/peers.py --out bench/results/cpu/peers [--quick] [--model CKPT]

With `--model CKPT` (a trained checkpoint) the dense peers still run the transformers model it started from: their
times compare, their quality rows then compare different weights. The default (the natural-order model) keeps both.

summary.worst_ratio_vs_best_peer: max over shapes and levels of (dynsparse as served: traced fp32, or the auto dtype /
the fastest peer at the same size), peers within the fp32 quality bound (int8 is reported, not counted). <= 1.0:
never slower.
"""

import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, load_model, plt, real_sentences, write_result  # noqa: E402

from dynsparse.assets.default import default_model_path  # noqa: E402
from dynsparse.export import export  # noqa: E402
from dynsparse.graphs import SizeGraphs  # noqa: E402
from dynsparse.masks import Structure  # noqa: E402
from dynsparse.modeling import ElasticModel  # noqa: E402
from dynsparse.precision import cast_model, pick_dtype  # noqa: E402

THREADS = 2
TRACED = "dynsparse fp32 (traced)"  # float32 as the server runs it on CPU: each size a traced graph
Feeds = dict[str, np.ndarray]


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    # no busy-waiting between calls: spinning threads would steal the cores from the contender timed next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ov_compiled(path: Path, precision: str | None) -> Any:
    """OpenVINO on `path`; `precision` None keeps its default hint (what a user who sets nothing gets)."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", config)


def ort_int8(path: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    return out


class _Hidden(torch.nn.Module):
    """A transformers encoder as (input_ids, attention_mask) -> last_hidden_state, for export."""

    def __init__(self, hf: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_dense_onnx(hf: torch.nn.Module, out: Path) -> Path:
    """The transformers model as ONNX (dynamic batch and length), last_hidden_state out: what a user exports."""
    ids = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "seq"}
    dynamic = {"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            _Hidden(hf).eval(),
            (ids, torch.ones_like(ids)),
            str(out),
            opset_version=18,
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes=dynamic,
        )
    return out


def _feeds(names: list[str], ids: torch.Tensor, mask: torch.Tensor) -> Feeds:
    all_ = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}
    return {n: all_[n] for n in names}


def runner(kind: str, obj: Any) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    """One call of a contender on (ids, mask), returning its first output as float32 numpy."""
    if kind == "ort":
        names = [i.name for i in obj.get_inputs()]
        return lambda ids, mask: obj.run(None, _feeds(names, ids, mask))[0]
    if kind == "ov":
        names = [p.get_any_name() for p in obj.inputs]
        req = obj.create_infer_request()
        return lambda ids, mask: np.array(req.infer(_feeds(names, ids, mask))[0], dtype=np.float32)
    raise ValueError(kind)


def torch_runner(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., np.ndarray]:
    def run(ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return fn(ids, mask).float().numpy()

    return run


def traced_runner(graphs: SizeGraphs, structure: Structure) -> Callable[..., np.ndarray]:
    """The size as `dynsparse serve` runs it on CPU: its traced graph (`dynsparse.graphs`), warmed."""
    graphs.warm(structure, head=True)
    return torch_runner(lambda i, m: graphs.run(i, m, None, structure, head=True))


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    w = mask[..., None].astype(np.float32)  # (B, T, 1)
    return (hidden * w).sum(1) / np.maximum(w.sum(1), 1.0)  # (B, H)


def compare(ref: np.ndarray, got: np.ndarray, logits: bool) -> dict[str, float]:
    """Agreement with fp32 dynsparse: per-row min cosine, max abs diff, and for logits the argmax agreement."""
    a, b = ref.reshape(len(ref), -1).astype(np.float64), got.reshape(len(got), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    q = {"min_cosine": round(float(cos.min()), 5), "max_abs_diff": round(float(np.abs(a - b).max()), 5)}
    if logits:
        q["agreement"] = round(float((ref.argmax(-1) == got.argmax(-1)).mean()), 4)
    return q


def build_contenders(
    model: ElasticModel, auto: torch.dtype, levels: list[float], work: Path, int8: bool
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{name: {"level", "group", "run", "logits"}}: every contender, built once; and the errors of those that failed."""
    from transformers import AutoModel

    out: dict[str, dict[str, Any]] = {}
    errors: list[str] = []

    def add(name: str, level: float, group: str, make: Callable[[], Callable[..., np.ndarray]], logits: bool) -> None:
        try:
            out[name] = {"level": level, "group": group, "run": make(), "logits": logits}
        except Exception as e:  # a runtime that cannot load this model: reported, the rest still run
            errors.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")

    low = cast_model(copy.deepcopy(model), auto) if auto != torch.float32 else None  # one cast: sizes stay views
    graphs = SizeGraphs(model)
    for s in levels:
        add(
            f"dynsparse fp32 @{s}",
            s,
            "dynsparse fp32",
            lambda s=s: torch_runner(lambda i, m: model(input_ids=i, attention_mask=m, sparsity=s).logits),
            True,
        )
        add(f"dynsparse traced @{s}", s, TRACED, lambda s=s: traced_runner(graphs, model.structure(s)), True)
        if low is not None:
            add(
                f"dynsparse {_name(auto)} @{s}",
                s,
                f"dynsparse {_name(auto)}",
                lambda s=s: torch_runner(lambda i, m: low(input_ids=i, attention_mask=m, sparsity=s).logits),
                True,
            )
        path = Path(export(model, s, work / f"export-{s}", "onnx"))
        add(
            f"ORT fp32 export @{s}",
            s,
            "ORT fp32 (dynsparse export)",
            lambda p=path: runner("ort", ort_session(p)),
            True,
        )
        add(
            f"OpenVINO fp32 export @{s}",
            s,
            "OpenVINO fp32 (dynsparse export)",
            lambda p=path: runner("ov", ov_compiled(p, "f32")),
            True,
        )
        add(
            f"OpenVINO default export @{s}",
            s,
            "OpenVINO default (dynsparse export)",
            lambda p=path: runner("ov", ov_compiled(p, None)),
            True,
        )
        if int8:
            add(
                f"ORT int8 export @{s}",
                s,
                "ORT int8 (dynsparse export)",
                lambda p=path, s=s: runner("ort", ort_session(ort_int8(p, work / f"int8-{s}.onnx"))),
                True,
            )
    hf = AutoModel.from_pretrained(_base(model), attn_implementation="sdpa").eval()
    add(
        "transformers sdpa",
        0.0,
        "transformers sdpa (dense)",
        lambda: torch_runner(lambda i, m: hf(input_ids=i, attention_mask=m).last_hidden_state),
        False,
    )
    dense = export_dense_onnx(hf, work / "dense.onnx")
    add("ORT fp32 dense", 0.0, "ORT fp32 (dense)", lambda: runner("ort", ort_session(dense)), False)
    add("OpenVINO fp32 dense", 0.0, "OpenVINO fp32 (dense)", lambda: runner("ov", ov_compiled(dense, "f32")), False)
    add(
        "OpenVINO default dense", 0.0, "OpenVINO default (dense)", lambda: runner("ov", ov_compiled(dense, None)), False
    )
    if int8:
        add(
            "ORT int8 dense",
            0.0,
            "ORT int8 (dense)",
            lambda: runner("ort", ort_session(ort_int8(dense, work / "dense-int8.onnx"))),
            False,
        )
    return out, errors


def _base(model: ElasticModel) -> str:
    """The transformers model dynsparse started from (its dense peers run that)."""
    base = str(model.meta.base_model or "")
    return base if (Path(base) / "config.json").is_file() else default_model_path()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quality(model: ElasticModel, contenders: dict[str, dict[str, Any]], texts: list[str]) -> dict[str, dict]:
    """Each contender against fp32 dynsparse at its level on one padded batch of real sentences."""
    enc = model.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.inference_mode():
        ref_pooled = mean_pool(model.encode(ids, mask, sparsity=0.0).numpy(), mask.numpy())
        ref_logits = {
            s: model(input_ids=ids, attention_mask=mask, sparsity=s).logits.numpy()
            for s in {c["level"] for c in contenders.values()}
        }
    q = {}
    for name, c in contenders.items():
        got = c["run"](ids, mask)
        q[name] = (
            compare(ref_logits[c["level"]], got, True)
            if c["logits"]
            else compare(ref_pooled, mean_pool(got, mask.numpy()), False)
        )
    return q


def time_shape(
    contenders: dict[str, dict[str, Any]], batch: int, seq: int, vocab: int, rounds: int
) -> dict[str, float]:
    """Median ms per call of every contender, interleaved: each round calls each contender once."""
    ids = torch.randint(5, vocab, (batch, seq))
    mask = torch.ones_like(ids)
    times: dict[str, list[float]] = {n: [] for n in contenders}
    for c in contenders.values():  # warm-up (lazy initialisation, first-shape compilation)
        c["run"](ids, mask), c["run"](ids, mask)
    for _ in tqdm(range(rounds), desc=f"{batch}x{seq}", leave=False):
        for name, c in contenders.items():
            t0 = time.perf_counter()
            c["run"](ids, mask)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {n: round(statistics.median(v), 3) for n, v in times.items()}


def summarise(rows: list[dict[str, Any]], ours: str) -> dict[str, Any]:
    """Per shape and level: our time over the fastest fp32-quality peer at the same size (dense peers at 0)."""
    ratios = []
    for r in rows:
        peers = {k: v for k, v in r["ms"].items() if not k.startswith("dynsparse") and "int8" not in k}
        best = min(peers, key=peers.__getitem__)
        r["best_peer"], r["ratio_vs_best_peer"] = best, round(r["ms"][ours] / peers[best], 3)
        ratios.append(r)
    worst = max(ratios, key=lambda r: r["ratio_vs_best_peer"])
    return {
        "worst_ratio_vs_best_peer": worst["ratio_vs_best_peer"],
        "worst_at": {k: worst[k] for k in ("batch", "seq_len", "sparsity", "best_peer")},
    }


def plot(rows: list[dict[str, Any]], groups: list[str], out: Path, title: str) -> None:
    pyplot = plt()
    shapes = sorted({(r["batch"], r["seq_len"]) for r in rows}, reverse=True)
    fig, axes = pyplot.subplots(1, len(shapes), figsize=(5 * len(shapes), 4.2), dpi=120, squeeze=False)
    for ax, (b, t) in zip(axes[0], shapes, strict=True):
        sel = sorted((r for r in rows if (r["batch"], r["seq_len"]) == (b, t)), key=lambda r: r["sparsity"])
        for g in groups:
            pts = [(r["sparsity"], r["ms"][g]) for r in sel if g in r["ms"]]
            if len(pts) > 1:
                ax.plot(*zip(*pts, strict=True), "o-" if g.startswith("dynsparse") else ".--", label=g, ms=4)
            elif pts:
                ax.plot(*pts[0], "s", label=g, ms=7)
        ax.set_title(f"batch {b} x {t} tokens", fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("ms per batch (median)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "peers.png")


def versions() -> dict[str, str]:
    import onnxruntime
    import openvino
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.get_version(),
    }


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--no_int8", action="store_true", help="skip ONNX Runtime dynamic int8")
    args = p.parse_args()
    if args.device != "cpu":
        raise SystemExit("bench/peers.py compares CPU runtimes: run it with --device cpu")
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)  # a wrapped (untrained) model's classifier is random: the same one every run
    model = load_model(args.model, "cpu")
    auto = pick_dtype("auto", torch.device("cpu"))
    levels = [0.0, 0.5, 0.9] if args.quick else [round(i / 10, 1) for i in range(10)]
    shapes = [(8, 32), (1, 16)] if args.quick else [(8, 128), (32, 64), (1, 16)]
    rounds = 3 if args.quick else 15
    with tempfile.TemporaryDirectory() as tmp:
        contenders, errors = build_contenders(model, auto, levels, Path(tmp), int8=not args.no_int8)
        q = quality(model, contenders, real_sentences(32 if args.quick else 64))
        rows = []
        for b, t in tqdm(shapes, desc="shapes"):
            ms = time_shape(contenders, b, t, model.shape.vocab_size, rounds)
            for s in levels:  # a level's row: the contenders of that size (the dense peers at 0)
                ms_s = {c["group"]: ms[n] for n, c in contenders.items() if c["level"] == s}
                rows.append({"batch": b, "seq_len": t, "sparsity": s, "ms": ms_s})
    ours = f"dynsparse {_name(auto)}" if auto != torch.float32 else TRACED  # what the server runs
    summary = {
        **summarise(rows, ours),
        "ours": ours,
        "auto_dtype": _name(auto),
        "threads": THREADS,
        "device": device_name("cpu"),
        "openvino_default_precision": _ov_default(),
        **versions(),
    }
    out = Path(args.out)
    write_result(
        out,
        "peers",
        {
            "summary": summary,
            "rows": rows,
            "quality": q,
            "errors": errors,
            "levels": levels,
            "rounds": rounds,
            "quick": args.quick,
        },
    )
    groups = list(dict.fromkeys(c["group"] for c in contenders.values()))
    plot(
        rows,
        groups,
        out,
        f"MiniLM-L6 on {summary['device']}, "
        f"{THREADS} threads each; OpenVINO default = {summary['openvino_default_precision']}",
    )


def _ov_default() -> str:
    import openvino as ov

    return str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


if __name__ == "__main__":
    main()
