"""Data sources, registered by name (`data=NAME`). Importing this package registers them all."""
from datacull.data import cifar, digits, fashion_mnist, imagenet, svhn, synthetic, wds  # noqa: F401
from datacull.data.base import SOURCES, DataSource, build_source, validate_keys  # noqa: F401
