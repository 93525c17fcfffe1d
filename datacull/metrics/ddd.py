"""DDD, dichotomous data difficulty: how many different models get an example wrong when it is held out.

Meding, Buschoff, Geirhos, Wichmann, "Trivial or impossible -- dichotomous data difficulty masks
model differences (on ImageNet and beyond)", ICLR 2022. They found that many models with very
different architectures agree on which examples are trivial (all correct) and which impossible
(all wrong). datacull scores an example by the fraction of a diverse ensemble that misclassifies
it in k-fold cross-validation (`metric.ddd.folds`, each member's out-of-fold prediction), as
Sorscher et al. 2022 used DDD as a pruning metric. High = hard.

Members (`metric.ddd.members`, any subset, order irrelevant):
  net                  the configured network (`model`, e.g. ResNet-8), trained by datacull's trainer
  logistic_regression  a linear model on standardised pixels
  knn                  k-nearest neighbours on standardised pixels (instance-based, local)
  random_forest        an ensemble of axis-aligned decision trees on pixels
Why these: they differ in inductive bias as much as possible (convolutional/learned features,
linear, local-metric, piecewise-constant), which is what makes agreement between them meaningful,
and the three scikit-learn members cost seconds on small images, so DDD stays CPU-sized. On
large, natural images the pixel models are weak: list only `net` (and raise `folds`) there, or
add a second network by overriding `model`. The pixel models see images resized to
`metric.ddd.pixel_size` (null = native size).
"""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training.data import iter_images
from datacull.training.dynamics import kfold_runs, kfold_splits
from datacull.training.trainer import predict_logits

MEMBERS = ("net", "logistic_regression", "knn", "random_forest")


def pixel_features(ctx: ScoreContext, size: int | None) -> np.ndarray:
    """float32 (N, H*W*C) pixels in [0, 1] of the scored examples, optionally resized to size x size."""
    shape = ctx.source.image_shape
    if not size and shape is None:
        raise DatacullError("images differ in size; set metric.ddd.pixel_size (e.g. 32) for the pixel members")
    side = (int(size), int(size)) if size else (int(shape[0]), int(shape[1]))
    channels = shape[2] if shape is not None else 3
    rows = [images.flatten(1).numpy().astype(np.float32) / 255.0
            for images, _ in iter_images(ctx.source, ctx.indices, side, channels, 1024,
                                         int(ctx.cfg.data.get("num_workers", 0) or 0),
                                         str(ctx.cfg.data.get("on_error", "skip")), desc="ddd pixels")]
    return np.concatenate(rows)


def sklearn_member(name: str, params: DictConfig, seed: int):
    """An unfitted scikit-learn classifier for member `name` with its settings from `metric.ddd.<name>`."""
    node = params.get(name) or {}
    if name == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(C=float(node.get("C", 1.0)),
                                                                  max_iter=int(node.get("max_iter", 200))))
    if name == "knn":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=int(node.get("n_neighbors", 5))))
    if name == "random_forest":
        depth = node.get("max_depth")
        return RandomForestClassifier(n_estimators=int(node.get("n_estimators", 100)),
                                      max_depth=None if depth is None else int(depth), random_state=seed)
    raise DatacullError(f"unknown metric.ddd member {name!r}; valid members: {', '.join(MEMBERS)}")


def out_of_fold_errors(ctx: ScoreContext, params: DictConfig) -> dict[str, np.ndarray]:
    """Per member, a bool (N,) array: misclassified when its fold was held out."""
    labels = ctx.require_labels("ddd")
    members = list(params.get("members", MEMBERS))
    if not members:
        raise DatacullError(f"metric.ddd.members is empty; list some of: {', '.join(MEMBERS)}")
    unknown = [m for m in members if m not in MEMBERS]
    if unknown:
        raise DatacullError(f"unknown metric.ddd member(s) {unknown}; valid members: {', '.join(MEMBERS)}")
    folds = int(params.get("folds", 5))
    seed = ctx.seed("ddd")
    splits = kfold_splits(labels, folds, seed, "ddd")
    epochs = params.get("net_epochs")
    pixels = pixel_features(ctx, params.get("pixel_size")) if any(m != "net" for m in members) else None
    net_runs = kfold_runs(ctx, "ddd", folds, seed, epochs) if "net" in members else None
    errors = {m: np.zeros(len(labels), dtype=bool) for m in members}
    for fold, (train_pos, held_pos) in enumerate(tqdm(splits, desc="ddd folds", unit="fold")):
        for member in members:
            if member == "net":
                run = next(net_runs)[3]
                predicted = predict_logits(run.model, ctx.source, ctx.indices[held_pos], ctx.cfg).argmax(1)
            else:
                model = sklearn_member(member, params, seed + fold).fit(pixels[train_pos], labels[train_pos])
                predicted = model.predict(pixels[held_pos])
            errors[member][held_pos] = predicted != labels[held_pos]
    return errors


@register_metric("ddd", "dichotomous data difficulty: fraction of diverse held-out models that misclassify",
                 needs="training", requires_labels=True,
                 citation="Meding et al. 2022")
def ddd(ctx: ScoreContext, params: DictConfig) -> np.ndarray:
    """Fraction of ensemble members whose out-of-fold prediction of the example is wrong (0..1)."""
    errors = out_of_fold_errors(ctx, params)
    return np.mean(np.stack(list(errors.values())), axis=0).astype(np.float64)
