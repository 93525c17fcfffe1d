"""Per-example training statistics, recorded from the forward pass the trainer already does.

For every training example and epoch the Recorder stores, from the logits of its training batch
(no second forward pass):

    correct  uint8    argmax(logits) == label                     (forgetting, Toneva et al. 2019)
    margin   float32  logit[label] - max_{k != label} logit[k]    (AUM, Pleiss et al. 2020; logits)
    el2n     float32  || softmax(logits) - onehot(label) ||_2     (EL2N, Paul et al. 2021)
    pred     int16    argmax(logits)                              (ensemble variation ratio)

as memory-mapped arrays `{run_dir}/record/{field}.npy` of shape (epochs, N_train), so ImageNet-sized
runs do not have to fit in memory. Column j is example `train_indices[j]` of the run.

The records come from the TRAIN-mode forward pass under augmentation, with the model as it is at
that step of the epoch (BatchNorm uses batch statistics). Toneva et al. (forgetting) and Pleiss et
al. (AUM) compute their statistics the same way; EL2N read from here is the in-training value of
that epoch rather than a separate evaluation pass of a frozen checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datacull.errors import DatacullError
from datacull.store import atomic_path, ensure_dir

FIELDS: dict[str, np.dtype] = {
    "correct": np.dtype(np.uint8),
    "margin": np.dtype(np.float32),
    "el2n": np.dtype(np.float32),
    "pred": np.dtype(np.int16),
}


@torch.no_grad()
def batch_statistics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, 4) float32 [correct, margin, el2n, pred] of a batch, computed on the logits' device."""
    logits = logits.detach().float()
    pred = logits.argmax(dim=1)
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    margin = label_logit - others.max(dim=1).values
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).float()
    el2n = (torch.softmax(logits, dim=1) - onehot).norm(dim=1)
    return torch.stack([(pred == labels).float(), margin, el2n, pred.float()], dim=1)


class Recorder:
    """Memory-mapped (epochs, N) arrays of per-example statistics under `directory`."""

    def __init__(self, directory: Path, arrays: dict[str, np.memmap]):
        self.directory = Path(directory)
        self.arrays = arrays

    @classmethod
    def create(cls, directory: Path, epochs: int, n: int) -> "Recorder":
        """New zero-filled arrays (each file is created under a temporary name, then renamed)."""
        directory = ensure_dir(Path(directory))
        for name, dtype in FIELDS.items():
            with atomic_path(directory / f"{name}.npy", suffix=".npy") as tmp:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(epochs, n))
                array.flush()
                del array
        return cls.open(directory, writable=True)

    @classmethod
    def open(cls, directory: Path, writable: bool = False) -> "Recorder":
        """Open existing arrays (read-only unless `writable`)."""
        directory = Path(directory)
        arrays = {}
        for name, dtype in FIELDS.items():
            path = directory / f"{name}.npy"
            try:
                arrays[name] = np.lib.format.open_memmap(path, mode="r+" if writable else "r")
            except (OSError, ValueError) as exc:
                raise DatacullError(f"training record {path} is missing or unreadable ({exc}); "
                                    f"delete {directory.parent} and train again") from None
            if arrays[name].dtype != dtype or arrays[name].shape != arrays["correct"].shape:
                raise DatacullError(f"training record {path} has an unexpected layout; delete {directory.parent}")
        return cls(directory, arrays)

    @property
    def epochs(self) -> int:
        return int(self.arrays["correct"].shape[0])

    @property
    def size(self) -> int:
        return int(self.arrays["correct"].shape[1])

    def record(self, epoch: int, positions: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Store the statistics of one batch: `positions` are columns (0-based epoch)."""
        stats = batch_statistics(logits, labels).cpu().numpy()
        self.arrays["correct"][epoch, positions] = stats[:, 0].astype(np.uint8)
        self.arrays["margin"][epoch, positions] = stats[:, 1]
        self.arrays["el2n"][epoch, positions] = stats[:, 2]
        self.arrays["pred"][epoch, positions] = stats[:, 3].astype(np.int16)

    def flush(self) -> None:
        """Write dirty pages to disk (called before each checkpoint)."""
        for array in self.arrays.values():
            array.flush()

    def field(self, name: str, epochs: slice | int | None = None) -> np.ndarray:
        """The (epochs, N) array of `name` (or the rows `epochs`), as a read view."""
        if name not in FIELDS:
            raise KeyError(f"unknown record field {name!r}; fields: {', '.join(FIELDS)}")
        array = self.arrays[name]
        return array if epochs is None else array[epochs]
