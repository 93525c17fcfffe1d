"""ImageNet (ILSVRC-2012, Russakovsky et al. 2015) or any image folder in torchvision's ImageFolder layout.

`data.root/{split}/{class_dir}/{file}.JPEG`: one folder per class (sorted names give label indices,
taken from the training split's folder so that every split agrees). Images are decoded with PIL to
RGB and keep their own size unless `data.image_size` is set. `raw(i)` returns the file's bytes, so
an export ships the original JPEGs. Human-readable class names are read from
`data.root/LOC_synset_mapping.txt` (Kaggle) or `synset_words.txt` (Caffe) when present.

ImageNet cannot be downloaded automatically (its licence requires a login at image-net.org).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datacull.data.base import CorruptExample, register_source
from datacull.data.encoded import EncodedSource, configured_size
from datacull.errors import DatacullError

SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


def _class_names(root: Path, classes: list[str]) -> list[str]:
    """Readable names for the class folders (first synonym from a synset file), else the folder names."""
    for filename in SYNSET_FILES:
        path = root / filename
        if path.is_file():
            mapping = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                wnid, _, words = line.strip().partition(" ")
                mapping[wnid] = words.split(",")[0].strip() or wnid
            return [mapping.get(c, c) for c in classes]
    return list(classes)


def image_key(prefix: str, relative: Path) -> str:
    """`{prefix}/{class_dir}/{file stem}` with dots replaced by '_' (webdataset splits keys at dots)."""
    return f"{prefix}/{relative.with_suffix('').as_posix()}".replace(".", "_")


class ImageFolderSource(EncodedSource):
    """Images listed as (path, label) pairs under `folder`, keyed by their path relative to it."""

    rgb = True

    def __init__(self, name: str, split: str, folder: Path, samples: list[tuple[str, int]], classes: list[str],
                 class_names: list[str], size: tuple[int, int] | None):
        self.name, self.split, self.folder = name, split, folder
        self.paths = [Path(p) for p, _ in samples]
        self._labels = np.array([label for _, label in samples], dtype=np.int64)
        self.num_classes, self.classes, self.class_names = len(classes), classes, class_names
        self.size = size
        self._keys, owner = [], {}
        for path in self.paths:
            key = image_key(f"{name}/{split}", path.relative_to(folder))
            if key in owner:
                raise DatacullError(f"{owner[key]} and {path} both map to key {key!r} (keys replace dots by '_' "
                                    "and drop the extension); rename one of them")
            owner[key] = path
            self._keys.append(key)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return None if self.size is None else (*self.size, 3)

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def raw(self, index: int) -> tuple[bytes, str]:
        path = self.paths[index]
        try:
            return path.read_bytes(), path.suffix.lstrip(".").lower()
        except OSError as exc:
            raise CorruptExample(f"{path}: cannot read ({exc.strerror or exc})") from None


def open_image_folder(name: str, root: Path, split: str, train_split: str,
                      size: tuple[int, int] | None) -> ImageFolderSource:
    """Index `root/split` as ImageFolder with the classes of `root/train_split` (or its own if that is absent)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    folder = root / split
    if not folder.is_dir():
        raise DatacullError(
            f"{name} {split} folder not found (looked in {folder}); ImageNet cannot be downloaded automatically: "
            "get ILSVRC-2012 from image-net.org and arrange it as ImageFolder, "
            f"{root}/{split}/<class_dir>/<image>.JPEG (one folder per class), then set data.root"
        )
    class_folder = root / train_split if (root / train_split).is_dir() else folder
    try:
        classes, class_to_idx = find_classes(str(class_folder))
    except FileNotFoundError:
        raise DatacullError(f"{class_folder} has no class folders; "
                            f"expected {class_folder}/<class_dir>/<image>") from None
    unknown = sorted({d.name for d in folder.iterdir() if d.is_dir()} - set(classes))
    if unknown:
        raise DatacullError(f"{folder} has class folders {unknown[:5]} that {class_folder} lacks; "
                            "every split needs the training split's classes")
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DatacullError(f"no images in {folder}/<class_dir>/ (extensions {', '.join(IMG_EXTENSIONS)})")
    return ImageFolderSource(name, split, folder, samples, classes, _class_names(root, classes), size)


@register_source("imagenet", "ImageNet or any ImageFolder tree root/{split}/{class}/{image} (RGB, sizes vary)")
def imagenet(data_cfg, split: str) -> ImageFolderSource:
    """Open `data.root/{split}` in ImageFolder layout (labels from the `data.split` folder's classes)."""
    root = Path(data_cfg.get("root") or ".").expanduser()
    size = configured_size(data_cfg.get("image_size"))
    return open_image_folder("imagenet", root, split, str(data_cfg.get("split") or "train"), size)
