"""AUM, area under the margin (Pleiss, Zhang, Elenberg, Weinberger, "Identifying mislabeled data
using the area under the margin ranking", NeurIPS 2020; reference code asappresearch/aum).

    margin_t(x, y) = z_y(x) - max_{k != y} z_k(x)        (logits z at epoch t)
    AUM(x, y)      = mean over epochs t in the window of margin_t(x, y)

computed on LOGITS as in the paper (some code uses probabilities), from the margins the trainer's
recorder took in each epoch's training forward pass (as the reference does), averaged over
`metric.aum.runs` runs. Low / negative AUM = hard or mislabelled, so the column is DIFFICULTY = -AUM.

`metric.aum.epochs`: the epoch window [start, end] (1-based, inclusive; null = all epochs, an end
of null = the last epoch). The reference skips the first epoch ("variability of random
initialization") and the paper sums up to the first learning-rate drop: e.g. `epochs: [2, 150]`.

`metric.aum.threshold_samples: true` adds the paper's threshold-sample procedure (AUM_WTR):
  - one seeded permutation of the scored examples; threshold set k = its k-th slice of
    N // (C + 1) examples (the paper's N/(c+1); the reference code uses N // C), relabelled to an
    extra, fake class C; run k (k < `threshold_runs`, at least 2: the reference's two runs) trains
    the model with C + 1 outputs on these labels (its own cached run, not shared: `threshold_runs`
    extra trainings; `metric.aum.runs` is not used in this mode);
  - in run k, an example is flagged when its AUM is below the threshold t_k, the
    `threshold_percentile` (99) percentile of the threshold samples' AUM, taken as the reference does
    (flagged when more than 1% of the threshold samples have a larger AUM, i.e. t_k = the
    (floor(0.01 M) + 1)-th largest of their M AUMs, compared strictly);
  - since the threshold sets are disjoint, every example is a real example in at least one run:
    its `aum` is -(mean AUM over those runs), `aum_flagged` is 1 when it is flagged in any of them
    (as the reference's AUM_WTR weights), and `aum_threshold` is -(mean t_k over those runs), on the
    scale of the `aum` column (so flagged roughly means aum > aum_threshold). The thresholds are printed.
"""
from __future__ import annotations

import logging
import numpy as np
from omegaconf import DictConfig

from datacull.data.base import DataSource, SubsetSource
from datacull.errors import DatacullError
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import register_metric
from datacull.training.dynamics import recorded_runs, run_count
from datacull.training.trainer import cached_run, run_seeds

log = logging.getLogger(__name__)


class RelabeledSource(SubsetSource):
    """All examples of `base` with the labels replaced (and a possibly larger number of classes)."""

    def __init__(self, base: DataSource, labels: np.ndarray, num_classes: int):
        super().__init__(base, np.arange(len(base)))
        self._relabeled = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes)

    @property
    def labels(self) -> np.ndarray:
        return self._relabeled


def epoch_window(params: DictConfig, total: int) -> slice:
    """The 0-based slice of recorded epochs that `metric.aum.epochs` ([start, end], 1-based, inclusive) selects."""
    window = params.get("epochs")
    if window is None:
        return slice(0, total)
    try:
        start, end = list(window)
        start, end = int(start), total if end is None else int(end)
    except (TypeError, ValueError):
        raise DatacullError(f"metric.aum.epochs must be null (all epochs) or [start, end], got {window}") from None
    if not 1 <= start <= end <= total:
        raise DatacullError(f"metric.aum.epochs=[{start}, {end}] must satisfy 1 <= start <= end <= "
                            f"train.epochs={total} (1-based, inclusive)")
    return slice(start - 1, end)


def run_aum(result, window: slice) -> np.ndarray:
    """AUM of every example of a recorded run: its mean logit margin over the epochs in `window`."""
    return np.asarray(result.recorder.field("margin"), dtype=np.float64)[window].mean(axis=0)


def wtr_threshold(fake_aum: np.ndarray, percentile: float) -> float:
    """The AUM threshold of the threshold samples, as the reference's AUM_WTR: an example is flagged
    (AUM < threshold) when more than (100 - percentile)% of the threshold samples have a larger AUM."""
    ranked = np.sort(np.asarray(fake_aum, dtype=np.float64))[::-1]
    position = int(np.floor((100.0 - percentile) / 100.0 * len(ranked)))  # 0-based index of the (j)-th largest
    return float(ranked[min(position, len(ranked) - 1)])


def threshold_sets(n: int, classes: int, runs: int, seed: int) -> list[np.ndarray]:
    """`runs` disjoint sets of n // (classes + 1) positions: consecutive slices of one seeded permutation."""
    size = n // (classes + 1)
    if size < 1:
        raise DatacullError(f"metric.aum.threshold_samples needs at least {classes + 1} examples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[k * size: (k + 1) * size]) for k in range(runs)]


def _threshold_aum(ctx: ScoreContext, params: DictConfig, window: slice) -> dict[str, np.ndarray]:
    classes = ctx.num_classes
    runs = int(params.get("threshold_runs", 2))
    if runs < 2 or runs > classes + 1:
        raise DatacullError(f"metric.aum.threshold_runs must be in [2, number of classes + 1 = {classes + 1}] so "
                            f"that every example is a real (not threshold) example in some run; got {runs}")
    percentile = float(params.get("threshold_percentile", 99))
    if not 0 < percentile < 100:
        raise DatacullError(f"metric.aum.threshold_percentile must be in (0, 100), got {percentile}")
    n = len(ctx.indices)
    total = np.zeros(n)
    threshold_sum = np.zeros(n)
    counts = np.zeros(n)
    flagged = np.zeros(n, dtype=bool)
    for k, (fake, seed) in enumerate(zip(threshold_sets(n, classes, runs, ctx.seed("aum")), run_seeds(ctx.cfg, runs))):
        full = ctx.source.labels.copy()
        full[ctx.indices[fake]] = classes
        relabeled = ScoreContext(ctx.cfg, RelabeledSource(ctx.source, full, classes + 1), ctx.indices)
        aum_k = run_aum(cached_run(relabeled, seed, tag=f"aum-threshold{k}", record=True), window)
        threshold = wtr_threshold(aum_k[fake], percentile)
        real = np.ones(n, dtype=bool)
        real[fake] = False
        log.info(f"aum: threshold run {k}: {len(fake)} threshold samples, AUM threshold {threshold:.4g}, "
                 f"{int((aum_k[real] < threshold).sum())} of {int(real.sum())} examples below it")
        total[real] += aum_k[real]
        threshold_sum[real] += threshold
        counts[real] += 1
        flagged[real] |= aum_k[real] < threshold
    assert (counts > 0).all()  # the threshold sets are disjoint, so each example is real in some run
    return {"aum": -total / counts, "aum_flagged": flagged.astype(np.int64),
            "aum_threshold": -threshold_sum / counts}


@register_metric("aum", "minus the area under the logit margin over training (low AUM = hard)",
                 needs="training", requires_labels=True, citation="Pleiss et al. 2020")
def aum(ctx: ScoreContext, params: DictConfig) -> np.ndarray | dict[str, np.ndarray]:
    """-AUM: minus the mean over the epoch window (and runs) of the recorded logit margin; with
    `threshold_samples` also `aum_flagged` and `aum_threshold` (AUM_WTR)."""
    ctx.require_labels("aum")
    window = epoch_window(params, int(ctx.cfg.train.epochs))
    if bool(params.get("threshold_samples", False)):
        return _threshold_aum(ctx, params, window)
    runs = run_count(params, "aum")
    return -np.mean([run_aum(r, window) for r in recorded_runs(ctx, "aum", runs)], axis=0)
