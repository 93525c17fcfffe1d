"""Fashion-MNIST (Xiao et al. 2017): 60,000 train / 10,000 test 28x28 grayscale images, 10 classes.

Looked for, in order: `data.root` (flat or torchvision's `FashionMNIST/raw/` layout, `.gz` or not),
the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), then a torchvision
download into `data.root` when `data.download=true`.
"""
from __future__ import annotations

from pathlib import Path

from datacull.data.base import ArraySource, register_source
from datacull.data.idx import read_idx
from datacull.errors import DatacullError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_PREFIX = {"train": "train", "test": "t10k"}


def _find(folder: Path, stem: str) -> Path | None:
    for sub in ("", "FashionMNIST/raw", "fashion-mnist", "raw"):
        for suffix in ("", ".gz"):
            path = folder / sub / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def find_fashion_mnist(root: Path | None, split: str, download: bool = False) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files for `split`, or one error saying where it looked."""
    if split not in _PREFIX:
        raise DatacullError(f"fashion_mnist has splits train and test, not {split!r}")
    stems = (f"{_PREFIX[split]}-images-idx3-ubyte", f"{_PREFIX[split]}-labels-idx1-ubyte")
    places = [p for p in (root, DEBIAN_DIR) if p is not None]
    for place in places:
        found = [_find(Path(place), s) for s in stems]
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
    if download and root is not None:
        import torchvision

        torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=True)
        return find_fashion_mnist(root, split, download=False)
    raise DatacullError(
        f"Fashion-MNIST {split} files not found (looked in {', '.join(str(p) for p in places)}); "
        "install them with `apt-get install dataset-fashion-mnist`, or set data.root to a folder with "
        "the IDX files, or pass data.download=true"
    )


@register_source("fashion_mnist", "Fashion-MNIST 28x28 grayscale, 10 classes (Debian package or data.root)")
def fashion_mnist(data_cfg, split: str) -> ArraySource:
    """Open Fashion-MNIST `split` as an in-memory array source."""
    root = Path(data_cfg.root).expanduser() if data_cfg.get("root") else None
    images_path, labels_path = find_fashion_mnist(root, split, bool(data_cfg.get("download", False)))
    images, labels = read_idx(images_path), read_idx(labels_path)
    if len(images) != len(labels):
        raise DatacullError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return ArraySource("fashion_mnist", split, images, labels, 10, CLASS_NAMES)
