"""Pruning metrics, registered by name; `datacull metrics` lists them. Importing registers them."""
from datacull.metrics.registry import METRICS, get_metric, list_metrics, register_metric  # noqa: F401
from datacull.metrics import prototypes  # noqa: F401,E402
from datacull.metrics import aum, el2n, ensemble, forgetting  # noqa: F401,E402
from datacull.metrics import ddd, grand, memorization  # noqa: F401,E402
