"""Data-parallel training under `torchrun`: who this process is, its process group and its share of a batch.

torchrun starts one process per device and describes each in environment variables (`RANK`, `LOCAL_RANK`,
`WORLD_SIZE`, `MASTER_ADDR`/`MASTER_PORT`). The command line turns them into a `World` (`world_from_env`);
everything else takes that `World`, so library code never reads the environment. A world of one is the
plain single-process run: no process group, no wrapper, no communication.

    torchrun --nproc_per_node 4 train.py ...            # 4 GPUs (NCCL), or 4 CPU processes (gloo)

Every rank samples the same sizes (`schedule.sample_sizes` is a pure function of seed and step) and reads
its own slice of the same global batch, so the run equals one process with `world_size` times the batch.
"""

import math
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dynsparse.errors import InputError


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (a world of one when not launched by torchrun)."""

    rank: int = 0  # global index of this process; rank 0 writes logs and checkpoints
    local_rank: int = 0  # index on this machine: picks the GPU
    size: int = 1  # number of processes

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size or self.local_rank < 0:
            raise ValueError(f"need 0 <= rank < size and local_rank >= 0, got {self}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env: Mapping[str, str]) -> World:
    """torchrun's `RANK`, `LOCAL_RANK` and `WORLD_SIZE`; a plain `python train.py` is a world of one."""
    try:
        return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))
    except ValueError as e:
        raise InputError(f"bad torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE): {e}") from None


def resolve_device(requested: str | None, world: World) -> torch.device:
    """One device per process: `cuda:LOCAL_RANK` for a distributed GPU run, else what was asked (cuda if any)."""
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and world.distributed:
        device = torch.device("cuda", world.local_rank)
    return device


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the block: NCCL when training on GPUs, gloo on CPUs."""
    if not world.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives and barriers use the current device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)  # MASTER_ADDR/PORT from torchrun
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if not world.distributed:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (downloads, dataset caches); the others follow and read what it wrote.

    If rank 0 fails inside, the others stay at the barrier until torchrun stops them (it does on any failure).
    """
    if not world.is_main:
        barrier(world)
    yield
    if world.is_main:
        barrier(world)


def shard(indices: Tensor, world: World) -> Tensor:
    """This rank's contiguous share of a global batch of example indices.

    A batch that does not divide by the world size is padded by wrapping around (as torch's
    DistributedSampler pads an epoch), so every rank gets the same number of examples and none is empty:
    the average of the ranks' mean losses is then the mean loss of the (padded) global batch.
    """
    if not world.distributed or len(indices) == 0:
        return indices
    per_rank = math.ceil(len(indices) / world.size)
    repeats = math.ceil(per_rank * world.size / len(indices))
    padded = indices.repeat(repeats)[: per_rank * world.size]
    return padded[world.rank * per_rank : (world.rank + 1) * per_rank]


def average_(world: World, *tensors: Tensor) -> None:
    """All-reduce `tensors` in place to their mean over ranks, in one collective (gloo has no AVG op)."""
    if not world.distributed or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world.size
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.view_as(t))


def gather_objects(world: World, obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def wrap_model(model: nn.Module, world: World, device: torch.device, skips_layers: bool = False) -> nn.Module:
    """`DistributedDataParallel` around `model` for training forwards (the model itself for a world of one).

    The wrapper all-reduces gradients in backward. It keeps the model's own parameters, so prefix slices,
    in-place rewiring and optimizer state all stay valid; callers keep using `model` for everything but the
    training forward (sizes, evaluation, saving). Every sliced forward still reaches every parameter (the
    rows past a prefix get zero gradient), so `find_unused_parameters` is not needed, unless elastic depth
    (`skips_layers`) leaves whole layers out of a forward.
    """
    if not world.distributed:
        return model
    # Buffers (the importance scores) keep DDP's default sync from rank 0: every rank sets them identically
    # anyway, they are small, and the flag to turn it off is named differently across torch versions.
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=skips_layers)


def sync_gradients(model: nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """Wrap a forward and its backward: `sync=False` only accumulates gradients locally (DDP's `no_sync`), so
    a step with several sizes and micro-batches all-reduces once, in its last backward."""
    if sync or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()
