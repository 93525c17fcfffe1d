"""Sources whose images are stored encoded (ImageFolder files, webdataset tar members).

`load(i)` decodes the original bytes with PIL (undecodable bytes raise CorruptExample with the
reason) and conforms them to the source's fixed size/channels when it has them; `raw(i)` returns
the bytes untouched, so an export ships exactly what was read.
"""
from __future__ import annotations

import io
import re
from abc import abstractmethod

import numpy as np
from PIL import Image

from datacull.data.base import CorruptExample, DataSource
from datacull.errors import DatacullError

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def decode_image(data: bytes, where: str, rgb: bool = False) -> np.ndarray:
    """Decode image bytes to uint8 (H, W, C): C=1 for grayscale (unless `rgb`), else 3 (alpha dropped).

    Any decoder failure (truncated or unknown format, malformed header, decompression bomb) raises
    CorruptExample naming `where` and the decoder's message.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = "L" if not rgb and image.mode in GRAY_MODES else "RGB"
            array = np.array(image.convert(mode), dtype=np.uint8)  # writable (torch.from_numpy warns otherwise)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) on bad bytes
        raise _corrupt(where, exc) from None
    return array[..., None] if array.ndim == 2 else array


def check_decodes(data: bytes, where: str) -> None:
    """Raise CorruptExample (as `decode_image` would) unless `data` decodes fully; no pixel conversion."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:
        raise _corrupt(where, exc) from None


def _corrupt(where: str, exc: Exception) -> CorruptExample:
    return CorruptExample(f"{where}: {type(exc).__name__}: {_no_reprs(str(exc))}")


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _no_reprs(message: str) -> str:
    """`message` without object reprs such as `<_io.BytesIO object at 0x7f...>` (they differ between runs)."""
    return _OBJECT_REPR.sub("the image bytes", message)


def configured_size(value, key: str = "data.image_size") -> tuple[int, int] | None:
    """`data.image_size` as (H, W): null -> None, an int -> square, a pair -> as given."""
    if value is None:
        return None
    try:
        size = (int(value), int(value)) if isinstance(value, (int, str)) else tuple(int(v) for v in value)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise DatacullError(f"{key}={value!r} must be a positive int or a pair [H, W]")
    return size  # type: ignore[return-value]


class EncodedSource(DataSource):
    """A source of encoded images: subclasses provide `raw(i)` and `describe(i)` (for error messages)."""

    size: tuple[int, int] | None = None  # resize every decoded image to this (H, W) when set
    channels: int | None = None  # convert every decoded image to this many channels when set
    rgb: bool = False  # decode grayscale as RGB too

    @abstractmethod
    def raw(self, index: int) -> tuple[bytes, str]:
        """The original encoded bytes of example `index` and their extension; CorruptExample if unreadable."""

    @abstractmethod
    def describe(self, index: int) -> str:
        """Where example `index` is stored (a file path, or shard and member), for messages."""

    def load(self, index: int) -> np.ndarray:
        from datacull.data.loader import conform  # imports torch: only when images are read

        data, _ = self.raw(index)
        return conform(decode_image(data, self.describe(index), rgb=self.rgb), self.size, self.channels)
