"""Data-parallel training under `torchrun` (torch DistributedDataParallel).

    torchrun --standalone --nproc_per_node=8 -m datacull.cli train model=resnet50 train=imagenet ...

`torchrun` starts one process per device and sets RANK / WORLD_SIZE / LOCAL_RANK; `setup` then joins
the process group (backend nccl on CUDA, gloo on CPU), one process per GPU (cuda:LOCAL_RANK).
Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op and training is the plain
single-process loop, unchanged.

Semantics (those of torch's DistributedSampler and the torchvision ImageNet reference,
pytorch/vision references/classification/train.py):
- `train.batch_size` is the GLOBAL batch: each of the W processes takes batch_size / W examples per
  step (batch_size must be a multiple of W), so the optimizer steps per epoch, the learning rate and
  its schedule are those of the single-process recipe; DDP averages the gradients over processes.
- Every process draws the same seeded per-epoch order; it is padded to a multiple of W by repeating
  its first examples, and process r takes positions r, r+W, r+2W, ... (`rank_order`). Global step k
  then trains exactly the examples of single-process batch k.
- BatchNorm stays per process (statistics over the per-process batch), as in the torchvision
  reference's default (its `--sync-bn` is off unless asked for), not SyncBatchNorm.
- Only rank 0 writes checkpoints, weights, run.json, the per-example record (gathered from all
  ranks), result rows and progress; the other ranks log warnings and errors only.
"""
from __future__ import annotations

import atexit
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from datacull.errors import DatacullError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, world size and local rank (device index)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that writes (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when training is data-parallel (more than one process)."""
        return self.world > 1


SINGLE = DistInfo()
_owned = False  # whether this module initialised the process group (and so destroys it)


def launched_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise DatacullError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with "
                            "`torchrun --nproc_per_node=N -m datacull.cli ...`") from None


def info() -> DistInfo:
    """The current process's DistInfo (SINGLE unless a process group with more than one rank is up)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def fail(message: str, dist_info: DistInfo | None = None) -> None:
    """Raise DatacullError(message) on rank 0 only, so a bad setting reads as one error line.

    The other ranks wait for torchrun to stop them once rank 0 has exited (then raise the same error
    themselves if it has not within 60 s). Call only where every rank reaches the same decision.
    """
    rank = (dist_info.rank if dist_info is not None else int(os.environ.get("RANK", "0") or 0))
    if rank != 0:
        time.sleep(60)
    raise DatacullError(message)


def check_batch(batch_size: int, world: int) -> int:
    """Per-process batch for the global `batch_size` split over `world` processes (an error if it does not divide)."""
    if world > 1 and (batch_size < world or batch_size % world):
        fail(f"train.batch_size={batch_size} cannot be split evenly over {world} processes (torchrun "
             f"--nproc_per_node / WORLD_SIZE): train.batch_size is the global batch; set it to a multiple of "
             f"{world} (e.g. {max(world, batch_size - batch_size % world)}) or launch fewer processes")
    return batch_size // max(world, 1)


def setup(device: torch.device) -> DistInfo:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) when launched with WORLD_SIZE > 1.

    Idempotent; a no-op returning SINGLE without torchrun. On CUDA each process uses cuda:LOCAL_RANK.
    Ranks other than 0 log warnings and errors only. The group is destroyed by `shutdown` (or at exit).
    """
    global _owned
    import torch.distributed as dist

    world = launched_world()
    if world <= 1:
        return SINGLE
    if not dist.is_available():
        raise DatacullError("this torch build has no torch.distributed; install a standard torch wheel for torchrun")
    if not dist.is_initialized():
        cuda = device.type == "cuda"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            if local_rank >= torch.cuda.device_count():
                raise DatacullError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                                    "visible; set torchrun --nproc_per_node to at most the number of GPUs")
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        _owned = True
        atexit.register(shutdown)
        if dist.get_rank() != 0:
            logging.getLogger("datacull").setLevel(logging.WARNING)
        log.info(f"distributed: {dist.get_world_size()} processes, backend {dist.get_backend()}")
    return info()


def device_for(device: torch.device, dist_info: DistInfo) -> torch.device:
    """This process's device: cuda:LOCAL_RANK under data-parallel CUDA training, else `device`."""
    if dist_info.active and device.type == "cuda":
        return torch.device("cuda", dist_info.local_rank)
    return device


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown() -> None:
    """Destroy the process group if `setup` created it."""
    global _owned
    import torch.distributed as dist

    if _owned and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def rank_order(order: np.ndarray, dist_info: DistInfo) -> np.ndarray:
    """This rank's share of the epoch order (DistributedSampler, drop_last=False): pad to a multiple of
    the world size by repeating the first positions, then take every world-th position from the rank."""
    if not dist_info.active:
        return order
    total = -(-len(order) // dist_info.world) * dist_info.world
    padded = np.concatenate([order, np.resize(order, total - len(order))]) if total > len(order) else order
    return padded[dist_info.rank::dist_info.world]


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over ranks (in place; returned)."""
    import torch.distributed as dist

    if info().active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_batch(positions: np.ndarray, logits: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Every rank's (positions, logits, labels) of one step concatenated (on all ranks; ranks may
    hold batches of different sizes)."""
    import torch.distributed as dist

    dist_info = info()
    if not dist_info.active:
        return positions, logits, labels
    device = logits.device
    count = torch.tensor([len(positions)], device=device)
    counts = [torch.zeros_like(count) for _ in range(dist_info.world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    most = max(sizes)

    def gathered(t: torch.Tensor) -> list[torch.Tensor]:
        padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=device)
        padded[: len(t)] = t
        out = [torch.empty_like(padded) for _ in range(dist_info.world)]
        dist.all_gather(out, padded)
        return [part[:n] for part, n in zip(out, sizes)]

    pos = torch.cat(gathered(torch.as_tensor(positions, dtype=torch.int64, device=device)))
    return (pos.cpu().numpy(), torch.cat(gathered(logits.detach().float())),
            torch.cat(gathered(labels.to(device))))
