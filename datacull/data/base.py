"""The data-source interface: a finite, indexable list of (key, image, label) examples."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from datacull.errors import DatacullError
from datacull.registry import Registry

SOURCES: Registry = Registry("data source", "data")
register_source = SOURCES.register

UNKNOWN_LABEL = -1


class CorruptExample(Exception):
    """An example whose image cannot be decoded; carries the reason for the manifest.

    `kind` names the group of the skip reason (`skipped: {kind}: {details}`, see `skip_reason`).
    """

    kind = "corrupt image"


class MissingImage(CorruptExample):
    """A sample that has no (readable) image member, e.g. only a caption or a symlinked image."""

    kind = "no image member"


def skip_reason(exc: CorruptExample) -> str:
    """`{kind}: {details}` for a CorruptExample, e.g. `corrupt image: ...` or `no image member: ...`."""
    return f"{exc.kind}: {exc}"


class DataSource(ABC):
    """A dataset split: `len(src)` examples with stable string keys, integer labels and images.

    Images are returned by `load(i)` as uint8 arrays of shape (H, W, C). `raw(i)` returns the
    original encoded bytes and their extension when the source stores images encoded (webdataset,
    ImageFolder), so exports can keep them untouched; array-backed sources return None.
    """

    name: str = ""
    split: str = "train"
    num_classes: int = 0
    class_names: list[str] | None = None

    _keys: list[str]
    _labels: np.ndarray

    @property
    def keys(self) -> list[str]:
        """Stable, unique string keys, one per example (no dots: webdataset splits on them)."""
        return self._keys

    @property
    def labels(self) -> np.ndarray:
        """int64 labels in [0, num_classes), or UNKNOWN_LABEL where the source has none."""
        return self._labels

    @abstractmethod
    def load(self, index: int) -> np.ndarray:
        """The decoded image of example `index` as uint8 (H, W, C); raises CorruptExample."""

    def raw(self, index: int) -> tuple[bytes, str] | None:
        """Original encoded bytes and extension (e.g. "jpg"), or None for array-backed sources."""
        return None

    def describe(self, index: int) -> str:
        """Where example `index` is stored, for messages (sources with files name them)."""
        return f"example {self.keys[index]}"

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) when every image has the same shape, else None (then set data.image_size)."""
        return None

    def __len__(self) -> int:
        return len(self.keys)


class ArraySource(DataSource):
    """A source held in memory as a uint8 array (N, H, W, C) plus labels."""

    def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray,
                 num_classes: int, class_names: list[str] | None = None, key_prefix: str | None = None):
        if images.ndim == 3:
            images = images[..., None]
        self.name, self.split = name, split
        self.images = images
        self._labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = num_classes
        self.class_names = class_names
        prefix = key_prefix or f"{name}/{split}"
        self._keys = [f"{prefix}/{i:06d}" for i in range(len(images))]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


def validate_keys(keys: list[str], where: str) -> None:
    """Raise one clear error if keys are empty, duplicated, or contain dots / unsafe path parts."""
    if len(keys) == 0:
        raise DatacullError(f"{where} has no examples; check data.root / data.urls and the split")
    seen: set[str] = set()
    dupes: list[str] = []
    for key in keys:
        if key in seen:
            dupes.append(key)
        seen.add(key)
    if dupes:
        raise DatacullError(
            f"{where} has {len(dupes)} duplicate keys (first: {dupes[:3]}); every example needs a unique key"
        )
    bad = [k for k in keys if not k or "." in k or k.startswith("/") or ".." in k.split("/")]
    if bad:
        raise DatacullError(
            f"{where} has {len(bad)} keys that are empty, absolute or contain a dot (first: {bad[:3]}); "
            "webdataset keys must not contain dots"
        )


def check_labels(labels: np.ndarray, num_classes: int, who: str) -> None:
    """Raise one clear error naming `who` if labels are missing or outside [0, num_classes)."""
    labels = np.asarray(labels)
    if (labels == UNKNOWN_LABEL).any():
        raise DatacullError(f"{who} needs labels, but {(labels == UNKNOWN_LABEL).sum()} examples have none")
    if num_classes <= 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise DatacullError(
            f"{who} needs labels in [0, {num_classes}); found range [{labels.min()}, {labels.max()}]"
        )


def build_source(data_cfg, split: str | None = None) -> DataSource:
    """Open the data source named by `data_cfg.name` for `split` (default: `data_cfg.split`)."""
    import datacull.data  # noqa: F401  (registers the built-in sources)

    entry = SOURCES.get(data_cfg.name)
    source = entry.obj(data_cfg, split or data_cfg.split)
    limit = data_cfg.get("limit")
    if limit:
        source = SubsetSource(source, np.arange(min(int(limit), len(source))))
    validate_keys(source.keys, f"data source {data_cfg.name!r} ({split or data_cfg.split} split)")
    return source


class SubsetSource(DataSource):
    """The examples of `base` at `indices` (keys and labels kept), e.g. for `data.limit`."""

    def __init__(self, base: DataSource, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.name, self.split = base.name, base.split
        self.num_classes, self.class_names = base.num_classes, base.class_names
        base_keys = base.keys
        self._keys = [base_keys[i] for i in self.indices]

    @property
    def labels(self) -> np.ndarray:
        return self.base.labels[self.indices]

    @property
    def image_shape(self):
        return self.base.image_shape

    def load(self, index: int) -> np.ndarray:
        return self.base.load(int(self.indices[index]))

    def raw(self, index: int):
        return self.base.raw(int(self.indices[index]))

    def describe(self, index: int) -> str:
        return self.base.describe(int(self.indices[index]))
