"""datacull: data pruning for training-set curation (Sorscher et al., NeurIPS 2022)."""

__version__ = "0.1.0"
