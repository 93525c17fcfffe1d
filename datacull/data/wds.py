"""Local webdataset tar shards (`data=wds data.urls='dir/shard-{000000..000009}.tar'`).

The brace pattern is expanded by webdataset (`{000000..000009}` ranges, `{a,b}` alternatives); on the
command line it works as a shell passes it, because `datacull.cli` quotes such values for Hydra.

Each sample needs an image member (jpg, jpeg, png, webp, ppm, pgm, pbm, bmp, tif, tiff or gif) and
may have a `.cls` member holding its integer label as text (missing: label -1, unknown). A sample
without a regular image member (none, or a link member, never followed) stays in the source and
cannot be loaded (MissingImage), so it is accounted for as `skipped: no image member`. The key is
webdataset's `__key__`. Opening the source reads only the tar headers (and the tiny `.cls` members)
to index every sample by shard and byte offset; images are read by offset when asked for, so `raw(i)`
returns the original encoded bytes and memory does not grow with the shards. Other members (json,
txt, and pickles such as .pyd, which are never unpickled) are ignored.

Each shard's index is cached on disk in `data.index_cache` (default `{paths.work_dir}/wds-index`;
null = no cache), keyed by the shard's resolved path and stamped with its size and mtime_ns, so
only the first open reads the tar headers (in `data.num_workers` processes); a changed shard or a
damaged index file is re-indexed (see `datacull.data.tar_index`).

Image size and channels come from `data.image_size` / `data.channels`, else from the first
decodable images: when these agree in size, every image is resized to that size, otherwise
`image_shape` is None and `data.image_size` must be set for embedding. `num_classes` is
`data.num_classes`, else the largest label + 1. The source has the split `data.split` (shards
`data.urls`) and `data.test_split` (shards `data.test_urls`).
"""
from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import numpy as np

from datacull.data.base import UNKNOWN_LABEL, CorruptExample, MissingImage, register_source
from datacull.data.encoded import EncodedSource, configured_size, decode_image
from datacull.data.tar_index import ShardIndex, index_shards, read_member, scan_shard
from datacull.errors import DatacullError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "bmp", "tif", "tiff", "gif")
PROBE_IMAGES = 16  # images decoded at open time to infer the size and channels
MAX_LABEL = 2**31 - 1  # a larger .cls value is not a class index (and would overflow int64 arrays)
NO_IMAGE, LINKED_IMAGE = -1, -2  # extension ids of samples without a readable image member

log = logging.getLogger(__name__)
# what a cached shard index depends on besides the shard: a change here re-indexes every shard
INDEX_TAG = "wds-v2:" + ",".join(IMAGE_EXTENSIONS)


def shard_paths(urls, root: Path | None, config_key: str) -> list[Path]:
    """Local shard paths from a brace pattern (or a list of them); one error for remote or missing shards."""
    from webdataset.shardlists import expand_urls

    paths: list[Path] = []
    for pattern in [urls] if isinstance(urls, str) else list(urls):
        for url in expand_urls(str(pattern)):
            if url.startswith("file:"):
                url = url[len("file://"):] if url.startswith("file://") else url[len("file:"):]
            elif "://" in url or url.startswith("pipe:"):
                raise DatacullError(f"{config_key} names {url!r}; the wds source reads local tar shards only: "
                                    "copy the shards to disk and point data.urls at them")
            path = Path(url).expanduser()
            paths.append(root / path if root is not None and not path.is_absolute() else path)
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise DatacullError(f"{len(missing)} of {len(paths)} shards of {config_key}={urls!r} not found "
                            f"(first: {missing[:3]}); check the path and brace range, e.g. "
                            f"{config_key}='dir/shard-{{000000..000009}}.tar'")
    return paths


def parse_label(payload: bytes | None, where: str) -> int:
    """The integer in a `.cls` member (UNKNOWN_LABEL when there is none)."""
    if payload is None:
        return UNKNOWN_LABEL
    try:
        text = payload.decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not re.fullmatch(r"[+-]?[0-9]+", text):  # int() would also read "1_0" as 10 and " 1 \n" forms
        raise DatacullError(f"{where} holds {payload[:20]!r}, not an integer class label")
    label = int(text)
    if label < UNKNOWN_LABEL:
        raise DatacullError(f"{where} holds the negative label {label}; labels must be >= 0 (or -1 for unknown)")
    if label > MAX_LABEL:
        raise DatacullError(f"{where} holds the label {text[:24]}, larger than {MAX_LABEL}; labels are class indices "
                            "in [0, data.num_classes)")
    return label


def index_wds_shard(shard: Path) -> ShardIndex:
    """Index one shard from its tar headers: per sample its image member and its `.cls` label."""
    keys, offsets, sizes, exts, labels = [], [], [], [], []
    for sample in scan_shard(shard, read=("cls",)):
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample.members), None)
        # a sample without a (regular) image member is kept as an example that cannot be loaded, so it is
        # accounted for as `skipped: no image member` instead of vanishing
        offset, length = sample.members[ext] if ext is not None else (-1, 0)
        keys.append(sample.key)
        offsets.append(offset)
        sizes.append(length)
        linked = any(e in IMAGE_EXTENSIONS for e in sample.links)
        exts.append(IMAGE_EXTENSIONS.index(ext) if ext is not None else LINKED_IMAGE if linked else NO_IMAGE)
        labels.append(parse_label(sample.payloads.get("cls"), f"shard {shard} member {sample.key}.cls"))
    return ShardIndex(keys, np.array(offsets, dtype=np.int64), np.array(sizes, dtype=np.int64),
                      np.array(exts, dtype=np.int8), np.array(labels, dtype=np.int64))


class WebDatasetSource(EncodedSource):
    """The samples of local webdataset shards, indexed by (shard, byte offset) of their image member."""

    def __init__(self, split: str, shards: list[Path], size: tuple[int, int] | None = None,
                 channels: int | None = None, num_classes: int | None = None,
                 index_cache: Path | None = None, num_workers: int = 0):
        self.name, self.split, self.shards = "wds", split, shards
        indexes = index_shards(shards, index_wds_shard, index_cache, INDEX_TAG, num_workers)
        self._keys = list(itertools.chain.from_iterable(index.keys for index in indexes))
        self._shard_ids = np.repeat(np.arange(len(shards), dtype=np.int32), [len(index) for index in indexes])

        def stacked(field: str, dtype) -> np.ndarray:
            return np.concatenate([getattr(index, field) for index in indexes] or [np.empty(0)]).astype(dtype)

        self._offsets, self._sizes = stacked("offsets", np.int64), stacked("sizes", np.int64)
        self._exts, self._labels = stacked("exts", np.int8), stacked("labels", np.int64)
        imageless = np.flatnonzero(self._exts < 0)
        if len(imageless):
            log.warning(f"wds: {len(imageless)} samples have no readable image member (first: "
                        f"{[self._keys[i] for i in imageless[:3]]}); they are skipped with the reason `no image "
                        f"member` (image extensions: {', '.join(IMAGE_EXTENSIONS)}; link members are not followed)")
        largest = int(self._labels.max()) if len(self._labels) else UNKNOWN_LABEL
        self.num_classes = int(num_classes) if num_classes is not None else largest + 1
        if largest >= self.num_classes:
            raise DatacullError(f"shards of the {split} split have label {largest}, but data.num_classes="
                                f"{self.num_classes}; raise data.num_classes or fix the .cls members")
        self.size, self.channels = self._infer_shape(size, channels)

    def _infer_shape(self, size, channels) -> tuple[tuple[int, int] | None, int]:
        """Configured size/channels, else those of the first decodable images (size None if they differ)."""
        if size is not None and channels is not None:
            return size, channels
        shapes = []
        for index in range(min(len(self), 4 * PROBE_IMAGES)):
            try:
                shapes.append(decode_image(self.raw(index)[0], self.describe(index)).shape)
            except CorruptExample:
                continue
            if len(shapes) == PROBE_IMAGES:
                break
        if channels is None:
            channels = 1 if shapes and all(s[2] == 1 for s in shapes) else 3
        if size is None and shapes and len({s[:2] for s in shapes}) == 1:
            size = shapes[0][:2]
        return size, channels

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return None if self.size is None else (*self.size, self.channels)

    def describe(self, index: int) -> str:
        if self._exts[index] < 0:
            return f"shard {self.shards[self._shard_ids[index]]} sample {self._keys[index]}"
        ext = IMAGE_EXTENSIONS[self._exts[index]]
        return f"shard {self.shards[self._shard_ids[index]]} member {self._keys[index]}.{ext}"

    def raw(self, index: int) -> tuple[bytes, str]:
        if self._exts[index] < 0:
            what = ("its image member is a link, which is never followed" if self._exts[index] == LINKED_IMAGE
                    else f"it has none of the image extensions {', '.join(IMAGE_EXTENSIONS)}")
            raise MissingImage(f"{self.describe(index)}: {what}")
        shard = self.shards[self._shard_ids[index]]
        try:
            data = read_member(shard, int(self._offsets[index]), int(self._sizes[index]))
        except (OSError, EOFError) as exc:
            raise CorruptExample(f"{self.describe(index)}: cannot read ({exc})") from None
        return data, IMAGE_EXTENSIONS[self._exts[index]]


@register_source("wds", "local webdataset tar shards (data.urls brace pattern; image + optional .cls label)")
def wds(data_cfg, split: str) -> WebDatasetSource:
    """Open the shards of `split`: `data.urls` for `data.split`, `data.test_urls` for `data.test_split`."""
    splits = {str(data_cfg.get("split") or "train"): "urls", str(data_cfg.get("test_split") or "test"): "test_urls"}
    if split not in splits:
        raise DatacullError(f"the wds source has the splits {', '.join(splits)} (data.split, data.test_split), "
                            f"not {split!r}")
    config_key = f"data.{splits[split]}"
    urls = data_cfg.get(splits[split])
    if not urls:
        raise DatacullError(f"{config_key} is not set, so the wds source has no {split} split; set it to the shards, "
                            f"e.g. {config_key}='dir/shard-{{000000..000009}}.tar'")
    root = Path(data_cfg.root).expanduser() if data_cfg.get("root") else None
    channels = data_cfg.get("channels")
    if channels is not None and int(channels) not in (1, 3):
        raise DatacullError(f"data.channels={channels!r} must be 1, 3 or null (inferred)")
    num_classes = data_cfg.get("num_classes")
    cache = data_cfg.get("index_cache")
    return WebDatasetSource(split, shard_paths(urls, root, config_key), configured_size(data_cfg.get("image_size")),
                            None if channels is None else int(channels),
                            None if num_classes is None else int(num_classes),
                            index_cache=Path(str(cache)).expanduser() if cache else None,
                            num_workers=int(data_cfg.get("num_workers") or 0))
