"""Vocabulary pruning: a smaller embedding matrix, the same answers on the corpus it was cut for."""

import csv
import subprocess
import sys
from pathlib import Path

import torch

import dynsparse
from dynsparse.vocab import prune_vocabulary, used_tokens


def _corpus(path: Path, texts: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t in texts)
    return path


def test_pruned_model_answers_the_corpus_as_before(tiny_ckpt: Path) -> None:
    full = dynsparse.load(str(tiny_ckpt))
    small = dynsparse.load(str(tiny_ckpt))
    texts = ["w1 w2 w3 w4", "w10 w12 w3"]
    keep = used_tokens(small.tokenizer, texts)
    counts = prune_vocabulary(small, keep)
    assert counts == {"original": 120, "kept": len(keep | {small.tokenizer.unk_token_id})}
    assert small.costs(0.0, 16)["params_embeddings"] < full.costs(0.0, 16)["params_embeddings"]
    enc = full.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        for s in (0.0, 0.5, 0.9):
            assert torch.allclose(small(**enc, sparsity=s).logits, full(**enc, sparsity=s).logits, atol=1e-6)
        # a word outside the corpus reads as the unknown token
        other = full.tokenizer(["w1 w77"], return_tensors="pt")
        as_unk = other["input_ids"].clone()
        as_unk[0, 2] = full.tokenizer.unk_token_id
        want = full(input_ids=as_unk, attention_mask=other["attention_mask"]).logits
        assert torch.allclose(small(**other).logits, want, atol=1e-6)


def test_prune_vocab_command_writes_a_loadable_smaller_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus.csv", ["w1 w2 w3", "w4 w5"])
    out = tmp_path / "small"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynsparse.cli",
            "prune-vocab",
            str(tiny_ckpt),
            "--data",
            str(corpus),
            "--output_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "kept" in r.stdout and "of 120 tokens" in r.stdout
    model = dynsparse.load(str(out))
    assert model.embeddings.word.num_embeddings == model.meta.vocabulary.kept < 120
    full = dynsparse.load(str(tiny_ckpt))
    enc = full.tokenizer(["w1 w2 w3", "w4 w5"], padding=True, return_tensors="pt")
    with torch.no_grad():  # the reloaded checkpoint answers its corpus as the original does
        assert torch.allclose(model(**enc, sparsity=0.5).logits, full(**enc, sparsity=0.5).logits, atol=1e-6)
    assert (out / "model.safetensors").stat().st_size < (tiny_ckpt / "model.safetensors").stat().st_size
    cmd = [sys.executable, "-m", "dynsparse.cli", "prune-vocab", str(tiny_ckpt), "--data", str(corpus), "--output_dir"]
    again = subprocess.run([*cmd, str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds a checkpoint" in again.stderr


def test_prune_vocab_bad_corpus_is_one_line(tiny_ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "numbers.csv"
    bad.write_text("a,b\n1,2\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynsparse.cli",
            "prune-vocab",
            str(tiny_ckpt),
            "--data",
            str(bad),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "no text columns" in r.stderr and "Traceback" not in r.stderr
