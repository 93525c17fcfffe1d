"""Row-stacked view over several memory-mapped arrays, so sharded embeddings are never concatenated."""
from __future__ import annotations

import numpy as np


class StackedRows:
    """Read-only vertical stack of 2-D arrays (e.g. np.load(..., mmap_mode="r") shards).

    Supports `len`, `shape`, `dtype`, slices and integer index arrays; each access copies only the
    rows it returns, so memory stays bounded by the block a caller asks for.
    """

    def __init__(self, parts: list[np.ndarray]):
        if not parts:
            raise ValueError("StackedRows needs at least one array")
        widths = {p.shape[1] for p in parts}
        if len(widths) != 1:
            raise ValueError(f"arrays differ in width: {sorted(widths)}")
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = parts[0].dtype

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.offsets[-1]), int(self.parts[0].shape[1])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, item) -> np.ndarray:
        if isinstance(item, slice):
            item = np.arange(*item.indices(len(self)))
        index = np.asarray(item)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + len(self), index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError("row index out of range")
        part = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), self.shape[1]), dtype=self.dtype)
        for p in np.unique(part):
            chosen = part == p
            out[chosen] = self.parts[p][index[chosen] - self.offsets[p]]
        return out


def finite_rows(rows, block: int = 65536) -> np.ndarray:
    """Boolean mask: True where every value of the row is finite (no NaN/inf); reads `rows` in blocks."""
    out = np.empty(len(rows), dtype=bool)
    for start in range(0, len(rows), block):
        chunk = np.asarray(rows[start: start + block], dtype=np.float32)
        out[start: start + len(chunk)] = np.isfinite(chunk).all(axis=1)
    return out
