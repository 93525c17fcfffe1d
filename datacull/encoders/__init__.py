"""Encoders, registered by name (`encoder=NAME`). Importing this package registers them all."""
from datacull.encoders.base import ENCODERS, Encoder, build_encoder  # noqa: F401
from datacull.encoders import pixels, simclr, timm_encoder  # noqa: F401,E402  (register the built-ins)
