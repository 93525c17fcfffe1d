"""SVHN, Street View House Numbers (Netzer et al. 2011): cropped 32x32 RGB digits, 10 classes.

Read from torchvision's on-disk format: `data.root/{train,test,extra}_32x32.mat` (MATLAB v5 files
with X of shape (32, 32, 3, N) and y of shape (N, 1)). The files label the digit 0 as 10; as in
torchvision, 10 becomes 0. With `data.download=true` a missing file is downloaded (and md5-checked)
by torchvision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datacull.data.base import ArraySource, register_source
from datacull.errors import DatacullError

SPLITS = ("train", "test", "extra")


def find_svhn(root: Path, split: str, download: bool = False) -> Path:
    """The .mat file of `split` (in root or root/svhn), or one clear error saying where it looked."""
    if split not in SPLITS:
        raise DatacullError(f"svhn has splits {', '.join(SPLITS)}, not {split!r}")
    filename = f"{split}_32x32.mat"
    places = [root / filename, root / "svhn" / filename]
    for path in places:
        if path.is_file():
            return path
    if download:
        from torchvision.datasets import SVHN
        from torchvision.datasets.utils import download_url

        url, name, md5 = SVHN.split_list[split]
        download_url(url, str(root), filename=name, md5=md5)
        return find_svhn(root, split, download=False)
    raise DatacullError(
        f"SVHN {split} file not found (looked for {', '.join(str(p) for p in places)}); pass data.download=true "
        f"to download it with torchvision into {root}, or set data.root to the folder that holds {filename}"
    )


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, 3), labels int64 in [0, 10)) from one SVHN .mat file."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises several types for damaged or MATLAB v7.3 (HDF5) files
        raise DatacullError(f"cannot read {path} ({type(exc).__name__}: {exc}); delete it and download again") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise DatacullError(f"{path} must hold X uint8 (H, W, 3, N) and y (N, 1), as the SVHN .mat files do")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(labels) != x.shape[3]:
        raise DatacullError(f"{path} has {x.shape[3]} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 10):
        raise DatacullError(f"{path} has labels outside 0..10")
    labels[labels == 10] = 0
    return np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2))), labels


@register_source("svhn", "SVHN 32x32 RGB house-number digits, 10 classes (torchvision .mat files under data.root)")
def svhn(data_cfg, split: str) -> ArraySource:
    """Open SVHN `split` ("train", "test" or "extra") as an in-memory array source."""
    root = Path(data_cfg.get("root") or ".").expanduser()
    images, labels = read_svhn(find_svhn(root, split, bool(data_cfg.get("download", False))))
    return ArraySource("svhn", split, images, labels, 10, [str(d) for d in range(10)])
