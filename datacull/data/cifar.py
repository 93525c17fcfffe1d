"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): 50,000 train / 10,000 test 32x32 RGB images.

Read from torchvision's on-disk layout under `data.root`: `cifar-10-batches-py/data_batch_1..5,
test_batch, batches.meta` and `cifar-100-python/train, test, meta` (CIFAR-100 uses the 100 fine
labels). With `data.download=true` a missing dataset is downloaded (and md5-checked) by torchvision.

The files are Python pickles. They are read with a restricted unpickler that resolves only the
globals a numpy array needs, so a tampered file cannot run code; anything else is refused.
"""
from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datacull.data.base import ArraySource, register_source
from datacull.errors import DatacullError


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant keeps its files and how its pickles name things."""

    name: str
    title: str
    folder: str
    files: dict[str, tuple[str, ...]]
    meta: str
    names_field: str
    label_field: str
    num_classes: int
    torchvision_class: str


SPECS = {
    "cifar10": CifarSpec("cifar10", "CIFAR-10", "cifar-10-batches-py",
                         {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                         "batches.meta", "label_names", "labels", 10, "CIFAR10"),
    "cifar100": CifarSpec("cifar100", "CIFAR-100", "cifar-100-python", {"train": ("train",), "test": ("test",)},
                          "meta", "fine_label_names", "fine_labels", 100, "CIFAR100"),
}


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy array reconstruction (old and new module paths)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}  # bytes in protocol <= 2
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy-array globals and refuses every other one."""

    def __init__(self, file, where: str):
        super().__init__(file, encoding="latin1")  # as torchvision: the files were written by Python 2
        self.where = where
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DatacullError(
                f"{self.where} refers to {module}.{name}, which a CIFAR file never needs; refusing to unpickle it "
                "(the file is damaged or tampered with: delete it and download the dataset again)"
            ) from None


def load_pickle(path: Path) -> Any:
    """Unpickle a CIFAR file with RestrictedUnpickler; any failure is one DatacullError naming the file."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, str(path)).load()
    except DatacullError:
        raise
    except Exception as exc:  # truncated or malformed pickles raise many types
        raise DatacullError(f"cannot read {path} ({type(exc).__name__}: {exc}); delete it and download again") from None


def _field(entry: Any, name: str, path: Path) -> Any:
    """entry[name], whether the pickle stored its keys as str (Python 2 + latin1) or bytes (Python 3)."""
    if isinstance(entry, dict):
        for key in (name, name.encode()):
            if key in entry:
                return entry[key]
    raise DatacullError(f"{path} has no {name!r} entry; it is not a CIFAR file of torchvision's layout")


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def find_cifar(spec: CifarSpec, root: Path, split: str, download: bool = False) -> Path:
    """The folder holding `spec`'s files for `split` (root/<folder> or root itself), or one clear error."""
    if split not in spec.files:
        raise DatacullError(f"{spec.name} has splits {', '.join(spec.files)}, not {split!r}")
    places = [root / spec.folder, root]
    for place in places:
        if all((place / f).is_file() for f in spec.files[split]):
            return place
    if download:
        import torchvision
        from torchvision.datasets.utils import download_and_extract_archive

        dataset = getattr(torchvision.datasets, spec.torchvision_class)
        download_and_extract_archive(dataset.url, str(root), filename=dataset.filename, md5=dataset.tgz_md5)
        return find_cifar(spec, root, split, download=False)
    raise DatacullError(
        f"{spec.title} {split} files ({', '.join(spec.files[split])}) not found "
        f"(looked in {', '.join(str(p) for p in places)}); pass data.download=true to download them with "
        f"torchvision into {root}, or set data.root to the folder that holds {spec.folder}/"
    )


def read_cifar(spec: CifarSpec, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(images uint8 (N, 32, 32, 3), labels int64, class names or None) of `split` from `folder`."""
    images, labels = [], []
    for filename in spec.files[split]:
        path = folder / filename
        entry = load_pickle(path)
        data = _field(entry, "data", path)
        targets = np.asarray(_field(entry, spec.label_field, path), dtype=np.int64).reshape(-1)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DatacullError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), "
                                f"found {getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}")
        if len(targets) != len(data):
            raise DatacullError(f"{path} has {len(data)} images but {len(targets)} labels")
        if len(targets) and (targets.min() < 0 or targets.max() >= spec.num_classes):
            raise DatacullError(f"{path} has labels outside [0, {spec.num_classes})")
        images.append(data)
        labels.append(targets)
    pixels = np.ascontiguousarray(np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    meta_path = folder / spec.meta
    names = None
    if meta_path.is_file():
        names = [_text(n) for n in _field(load_pickle(meta_path), spec.names_field, meta_path)]
        if len(names) != spec.num_classes:
            raise DatacullError(f"{meta_path} lists {len(names)} class names, expected {spec.num_classes}")
    return pixels, np.concatenate(labels), names


def open_cifar(name: str, data_cfg, split: str) -> ArraySource:
    """Open CIFAR variant `name` ("cifar10" or "cifar100") for `split` as an in-memory array source."""
    spec = SPECS[name]
    root = Path(data_cfg.get("root") or ".").expanduser()
    folder = find_cifar(spec, root, split, bool(data_cfg.get("download", False)))
    images, labels, names = read_cifar(spec, folder, split)
    return ArraySource(spec.name, split, images, labels, spec.num_classes, names)


@register_source("cifar10", "CIFAR-10 32x32 RGB, 10 classes (torchvision layout under data.root)")
def cifar10(data_cfg, split: str) -> ArraySource:
    """CIFAR-10 `split` ("train": data_batch_1..5, "test": test_batch)."""
    return open_cifar("cifar10", data_cfg, split)


@register_source("cifar100", "CIFAR-100 32x32 RGB, 100 fine classes (torchvision layout under data.root)")
def cifar100(data_cfg, split: str) -> ArraySource:
    """CIFAR-100 `split` ("train" or "test") with its 100 fine labels."""
    return open_cifar("cifar100", data_cfg, split)
