"""Which source examples a training run uses: explicit indices or the kept rows of a selection file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datacull.data.base import DataSource
from datacull.errors import DatacullError


def indices_from_selection(path: Path, source: DataSource) -> np.ndarray:
    """Source indices (sorted) of the keys marked `kept` in a selection parquet file.

    The join is by key, never by position. Keys that the source does not have are an error naming
    how many there are and the first few (the selection was made for other data).
    """
    path = Path(path)
    if not path.is_file():
        raise DatacullError(f"selection file {path} does not exist; run `datacull select` first or fix the path")
    try:
        table = pq.read_table(path, columns=["key", "kept"])
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise DatacullError(f"cannot read columns key, kept from selection file {path}: {exc}") from None
    keys = table.column("key").to_pylist()
    kept = np.asarray(table.column("kept").to_numpy(zero_copy_only=False), dtype=bool)
    kept_keys = [k for k, keep in zip(keys, kept) if keep]
    position = {key: i for i, key in enumerate(source.keys)}
    unknown = [k for k in kept_keys if k not in position]
    if unknown:
        raise DatacullError(
            f"selection file {path} keeps {len(unknown)} keys that data source {source.name!r} "
            f"({source.split}) does not have (first: {unknown[:3]}); was it made for other data?"
        )
    if not kept_keys:
        raise DatacullError(f"selection file {path} keeps no examples; nothing to train on")
    return np.sort(np.fromiter((position[k] for k in kept_keys), dtype=np.int64, count=len(kept_keys)))


def check_indices(indices: np.ndarray, source: DataSource) -> np.ndarray:
    """`indices` as int64, checked to be non-empty, unique and inside the source."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) == 0:
        raise DatacullError("the training subset is empty; keep at least one example")
    if indices.min() < 0 or indices.max() >= len(source):
        raise DatacullError(
            f"training indices must lie in [0, {len(source)}) for data source {source.name!r}; "
            f"got range [{indices.min()}, {indices.max()}]"
        )
    if len(np.unique(indices)) != len(indices):
        raise DatacullError("training indices contain duplicates; each example may appear once")
    return indices
