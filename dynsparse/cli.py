"""The `dynsparse` command: train, evaluate, profile, serve, export.

Bad arguments or inputs print one line on stderr and exit 2; an unexpected failure prints one line
and exits 1, with the traceback in the log file. Never a traceback on the console.
"""

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynsparse.cli_assets import add_asset_commands
from dynsparse.errors import InputError

log = logging.getLogger("dynsparse")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse's own prints the whole usage)
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _guarded(fn: Callable[[], Any]) -> int:
    from dynsparse.cli_logging import setup_console_log

    setup_console_log()
    try:
        fn()
        return 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # last resort: one line on the console, the traceback in a file
        from dynsparse.recipe import cache_dir

        where = cache_dir() / "last-error.log"
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(traceback.format_exc())
        log.debug("unexpected failure", exc_info=True)
        print(f"error: unexpected {type(e).__name__}: {str(e)[:300]} (traceback in {where})", file=sys.stderr)
        return 1


# -- train -------------------------------------------------------------------------------------------
def train_main(argv: Sequence[str] | None = None) -> int:
    """`python train.py ...` / `dynsparse train ...`: flags follow transformers' run_glue.py."""
    from transformers import HfArgumentParser

    from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    types = (ModelArguments, DataArguments, SparsityArguments, TrainArguments)
    parser = HfArgumentParser(
        types,  # type: ignore[arg-type]  # frozen dataclasses are DataClassType at run time
        prog="train.py",
        description="Once-for-all Dynamic Sparsification training.",
    )
    parser.add_argument("--config", help="json or yaml file of flags (command-line flags override it)")
    parser.error = _Parser.error.__get__(parser)  # type: ignore[method-assign]

    def run() -> None:
        from dynsparse.cli_logging import set_console_level
        from dynsparse.distributed import world_from_env
        from dynsparse.recipe import run_training

        pre, _ = parser.parse_known_args(argv)
        if pre.model_name_or_path is None and pre.train_file is None and not pre.config:  # the embedded default
            from dynsparse.assets.default import DEFAULT_FLAGS

            parser.set_defaults(**DEFAULT_FLAGS)
        if pre.config:
            parser.set_defaults(**_read_config(Path(pre.config), parser))
        try:
            m, d, sp, t, _extra = parser.parse_args_into_dataclasses(args=argv)
        except ValueError as e:  # a dataclass's __post_init__ check
            raise InputError(str(e)) from None
        world = world_from_env(os.environ)  # torchrun describes each process it starts in the environment
        if not world.is_main:
            set_console_level(logging.WARNING)  # rank 0 speaks for the run; the others only report problems
        run_training(m, d, sp, t, world)

    return _guarded(run)


def _read_config(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"--config {path}: no such file")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            cfg = yaml.safe_load(path.read_text())
        else:
            cfg = json.loads(path.read_text())
    except Exception as e:  # yaml and json raise their own types
        raise InputError(f"--config {path}: cannot parse ({str(e).splitlines()[0]})") from None
    known = {a.dest for a in parser._actions}
    if not isinstance(cfg, dict) or set(cfg) - known:
        raise InputError(f"--config {path}: unknown keys {sorted(set(cfg) - known) if isinstance(cfg, dict) else cfg}")
    return cfg


# -- evaluate / profile ------------------------------------------------------------------------------
def _evaluate(args: argparse.Namespace) -> None:
    """One checkpoint: its level table in --output_dir. Several (e.g. one per importance algorithm, or
    once-for-all against one-shot): each table in a subfolder, and their metric curves on one plot."""
    from dynsparse.evaluate import write_comparison
    from dynsparse.level_table import evaluate_checkpoint

    if len(args.checkpoint) == 1:
        evaluate_checkpoint(args.checkpoint[0], args, Path(args.output_dir))
        return
    names = _unique_names(args.checkpoint)
    curves, metric = {}, None
    for path, name in zip(args.checkpoint, names, strict=True):
        rows, metric, label = evaluate_checkpoint(path, args, Path(args.output_dir) / name)
        curves[f"{name} ({label})"] = rows
    write_comparison(curves, metric, Path(args.output_dir))


def _unique_names(paths: list[str]) -> list[str]:
    names = [Path(p).resolve().name for p in paths]
    return names if len(set(names)) == len(names) else [f"{i}-{n}" for i, n in enumerate(names)]


def _profile(args: argparse.Namespace) -> None:
    import torch

    from dynsparse.level_table import load_in_dtype
    from dynsparse.levels import default_levels
    from dynsparse.profile import profile_levels

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, dtype = load_in_dtype(args.checkpoint, device, args.dtype)
    levels = args.levels or default_levels(model.meta.sparsity_range[1])
    rows = profile_levels(model, levels, args.batch_sizes, args.seq_lens)
    print(f"{'sparsity':>9} {'batch':>6} {'seq_len':>8} {'latency_ms':>11}")
    for r in rows:
        print(f"{r['sparsity']:>9} {r['batch']:>6} {r['seq_len']:>8} {r['latency_ms']:>11.2f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        doc = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "rows": rows}
        Path(args.output).write_text(json.dumps(doc, indent=2))


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {value}")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"need a positive integer, got {text!r}")
    return int(text)


def _serve(args: argparse.Namespace) -> None:
    try:
        from service.cli import serve
    except ImportError as e:
        raise InputError(f"serving needs the 'serve' extra: pip install 'dynsparse[serve]' ({e})") from None
    serve(args)


def _export(args: argparse.Namespace) -> None:
    import dynsparse
    from dynsparse.export import export

    model = dynsparse.load(args.checkpoint)
    file = export(model, args.sparsity, args.output, args.format, args.depth, args.language)
    log.info(
        "wrote %s (sparsity %s, per layer (heads, neurons) %s)",
        file,
        args.sparsity,
        model.structure(args.sparsity, args.depth, args.language),
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dynsparse", description="Train once, run and serve any sparsity from one checkpoint.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("train", help="once-for-all training (same flags as train.py; see `train.py --help`)")
    _add_evaluate(sub)
    _add_profile(sub)
    _add_serve(sub)
    _add_export(sub)
    add_asset_commands(sub)
    return p


def _add_evaluate(sub: Any) -> None:
    """`dynsparse evaluate`."""
    ev = sub.add_parser("evaluate", help="every level of a checkpoint: levels.json, levels.png, a table")
    ev.add_argument("checkpoint", nargs="+", help="several: each in a subfolder, compared on compare.png")
    ev.add_argument(
        "--validation_file",
        required=True,
        nargs="+",
        help="one file, or one per language (the file name's stem becomes the language)",
    )
    ev.add_argument("--output_dir", required=True)
    ev.add_argument("--levels", type=_sparsity, nargs="+", help="default: 0, 0.1, ... up to the trained maximum")
    ev.add_argument(
        "--depths",
        type=_positive,
        nargs="+",
        help="layer counts to evaluate (default: all; trained depths after --min_depth)",
    )
    ev.add_argument(
        "--ordering",
        choices=["auto", "shared"],
        default="auto",
        help="auto: each row's language's ordering if the checkpoint has one; shared: never",
    )
    ev.add_argument("--batch_size", type=_positive, default=64)
    ev.add_argument("--max_seq_length", type=_positive, default=128)
    ev.add_argument("--max_eval_samples", type=_positive)
    ev.add_argument("--latency_batch", type=_positive, default=8)
    ev.add_argument("--latency_seq_len", type=_positive, default=128)
    ev.add_argument("--text_column")
    ev.add_argument("--text_pair_column")
    ev.add_argument("--label_column")
    ev.add_argument(
        "--agreement",
        action="store_true",
        help="also each level's agreement with dense (always on a file without labels)",
    )
    ev.add_argument("--device")
    ev.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="auto: bfloat16 on a CPU with bf16 instructions, float16 on cuda, else float32",
    )
    ev.set_defaults(run=_evaluate)


def _add_profile(sub: Any) -> None:
    """`dynsparse profile`."""
    pr = sub.add_parser("profile", help="measured latency per level, batch size and sequence length")
    pr.add_argument("checkpoint")
    pr.add_argument("--levels", type=_sparsity, nargs="+")
    pr.add_argument("--batch_sizes", type=_positive, nargs="+", default=[1, 8])
    pr.add_argument("--seq_lens", type=_positive, nargs="+", default=[32, 128])
    pr.add_argument("--output", help="also write the rows as JSON here")
    pr.add_argument("--device")
    pr.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="auto: bfloat16 on a CPU with bf16 instructions, float16 on cuda, else float32",
    )
    pr.set_defaults(run=_profile)


def _add_serve(sub: Any) -> None:
    """`dynsparse serve` (the service reads these flags, `service.cli.build_settings`)."""
    sv = sub.add_parser("serve", help="the HTTP server (FastAPI); settings also from DYNSPARSE_* variables")
    sv.add_argument("checkpoint")
    sv.add_argument("--host", default=None, help="default 127.0.0.1")
    sv.add_argument("--port", type=int, default=None, help="default 8000")
    sv.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    sv.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default=None)
    sv.add_argument("--default_size", default=None, help="a size name or a sparsity (default: the densest)")
    sv.add_argument("--levels", type=_sparsity, nargs="+", help="a grid: requests go to the next denser level")
    sv.add_argument("--max_batch_size", type=_positive, default=None)
    sv.set_defaults(run=_serve)


def _add_export(sub: Any) -> None:
    """`dynsparse export`."""
    ex = sub.add_parser(
        "export",
        help="one size as a standalone model (ONNX, TorchScript or transformers)",
        description="Write the checkpoint at one sparsity as a fixed-size model into the directory OUTPUT: "
        "model.onnx (opset 18, with config.json for optimum), model.pt (TorchScript, torch.jit.load) or "
        "model.safetensors + config.json (transformers; sentence-transformers files for embeddings), the tokenizer "
        "files and "
        "dynsparse_export.json (sparsity, structure, labels, inputs). Inputs: input_ids, attention_mask "
        "(and token_type_ids where the model has them), any batch size and length; outputs under transformers' "
        "names (logits; start_logits, end_logits; embeddings, last_hidden_state). "
        "ONNX needs the 'export' extra: pip install 'dynsparse[export]'.",
    )
    ex.add_argument("checkpoint")
    ex.add_argument("--sparsity", type=_sparsity, required=True, help="the size to export, in [0, 1)")
    ex.add_argument(
        "--format",
        choices=["onnx", "torch", "transformers"],
        default="onnx",
        help="default: onnx; transformers: a directory AutoModelFor<Task>.from_pretrained loads",
    )
    ex.add_argument("--depth", type=_positive, default=None, help="keep only this many layers (default: all)")
    ex.add_argument("--language", default=None, help="a language's own ordering (per-language checkpoints)")
    ex.add_argument("--output", required=True, help="output directory (created; files of the same names replaced)")
    ex.set_defaults(run=_export)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    return _guarded(lambda: args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
