"""Training engine: models, the trainer with its per-example recorder, and cached runs."""
from datacull.training.models import MODELS, ClassifierNet, build_model  # noqa: F401
from datacull.training.recorder import Recorder  # noqa: F401
from datacull.training.subset import indices_from_selection  # noqa: F401
from datacull.training.trainer import (  # noqa: F401
    TrainResult, cached_run, load_epoch_model, predict_logits, run_seeds, to_input, train_model, weights_path,
)
