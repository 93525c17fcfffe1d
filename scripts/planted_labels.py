"""Planted flipped labels on real data: where does each metric rank the mislabelled examples?

Flips a fraction of the labels of the first N examples of a dataset (default: 3,000 Fashion-MNIST
training images, 5%), scores them with every label-aware metric under its former default ("before")
and its current, reference-protocol default ("after"), and writes a markdown table: the mean
percentile of the flipped examples (100 = hardest), the share of them in the hardest decile, and the
share without a score (NaN). Runs are cached in a work dir of their own (the flipped labels are not
part of the data identity, so they must never share the main work dir's training runs).

    python scripts/planted_labels.py --out docs/results/planted_fmnist.md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from datacull.config import compose
from datacull.data.base import ArraySource, build_source
from datacull.encoders.base import build_encoder
from datacull.metrics.context import ScoreContext
from datacull.metrics.registry import METRICS

# (row label, metric, overrides of the "before" variant, overrides of the "after" variant)
VARIANTS = [
    ("el2n (epoch 2)", "el2n", ["metric.el2n.source=recorded"], ["metric.el2n.source=checkpoint"]),
    ("el2n (epoch 4)", "el2n", ["metric.el2n.source=recorded", "metric.el2n.epoch=4"],
     ["metric.el2n.source=checkpoint", "metric.el2n.epoch=4"]),
    ("ensemble_uncertainty", "ensemble_uncertainty", ["metric.ensemble_uncertainty.pool=in_sample"],
     ["metric.ensemble_uncertainty.pool=out_of_fold"]),
    ("memorization (K=8)", "memorization", ["metric.memorization.design=iid", "metric.memorization.models=8"],
     ["metric.memorization.design=balanced", "metric.memorization.models=8"]),
    ("aum", "aum", None, []),
    ("forgetting", "forgetting", None, []),
    ("supervised_prototypes", "supervised_prototypes", None, []),
    ("ddd", "ddd", None, []),
]


def flipped_source(cfg, n: int, fraction: float, seed: int) -> tuple[ArraySource, np.ndarray]:
    """The first `n` examples with `fraction` of the labels moved to another class; also the flipped indices."""
    base = build_source(cfg.data)
    rng = np.random.default_rng(seed)
    labels = base.labels[:n].copy()
    classes = int(base.num_classes)
    flip = rng.choice(n, size=int(round(fraction * n)), replace=False)
    labels[flip] = (labels[flip] + rng.integers(1, classes, len(flip))) % classes
    images = np.stack([base.load(i) for i in range(n)])
    return ArraySource(str(cfg.data.name), "train", images, labels, classes, base.class_names), flip


def pixel_embeddings(cfg, source: ArraySource) -> np.ndarray:
    """The `encoder=pixels` embedding (PCA of the pixels, fitted on these examples) of every example."""
    encoder = build_encoder(cfg.encoder, int(cfg.seed))
    encoder.prepare(source, Path(cfg.paths.work_dir) / "encoder-cache", torch.device("cpu"))
    images = torch.from_numpy(np.stack([source.load(i) for i in range(len(source))])).permute(0, 3, 1, 2)
    return encoder.encode(images.contiguous()).numpy().astype(np.float32)


def flipped_summary(values: np.ndarray, flip: np.ndarray) -> tuple[float, float, float]:
    """(mean percentile of the flipped, share of them in the hardest decile, share of all without a score).

    Percentiles use average ranks, so examples tied with many others (discrete metrics) sit in the
    middle of their tie group rather than at a position-dependent place in it.
    """
    finite = np.isfinite(values)
    ranks = rankdata(np.where(finite, values, -np.inf), method="average") - 1
    percentile = 100.0 * ranks / (len(values) - 1)
    scored = flip[finite[flip]]
    return float(percentile[scored].mean()), float((percentile[scored] >= 90.0).mean()), float(1 - finite.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="datacull_work/planted")
    parser.add_argument("--out", default="docs/results/planted_fmnist.md")
    parser.add_argument("--only", nargs="*", default=None, help="metric names to run (default: all)")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides for every variant")
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = [f"data={args.data}", f"paths.work_dir={args.work_dir}", "device=cpu", "encoder=pixels", *args.override]
    source, flip = flipped_source(compose(common), args.n, args.fraction, args.seed)
    rows = []
    for label, metric, before, after in VARIANTS:
        if args.only is not None and metric not in args.only:
            continue
        cells = []
        for overrides in (before, after):
            if overrides is None:
                cells.append(None)
                continue
            cfg = compose([*common, *overrides])
            ctx = ScoreContext(cfg, source, np.arange(args.n), embeddings_loader=lambda: pixel_embeddings(cfg, source))
            began = time.perf_counter()
            result = METRICS.get(metric).obj(ctx, ctx.params(metric))
            values = np.asarray(result[metric] if isinstance(result, dict) else result, dtype=np.float64)
            cells.append((*flipped_summary(values, flip), time.perf_counter() - began))
            print(f"{label} {overrides}: {cells[-1]}", flush=True)
        rows.append((label, *cells))
    lines = [f"Planted flipped labels: {args.data}, first {args.n} training images, {args.fraction:.0%} of labels "
             f"changed (seed {args.seed}); CPU defaults (ResNet-8 w16, 6 epochs, 2 runs)"
             + (f", overrides {' '.join(args.override)}." if args.override else "."),
             "Mean percentile of the flipped examples (100 = hardest; ties at their average rank) / share of them in "
             "the hardest decile / "
             "share of all examples without a score. `before` = the former default, `after` = the current default.",
             "", "| metric | before | after |", "|---|---|---|"]
    for label, before, after in rows:
        def fmt(cell):
            if cell is None:
                return "(unchanged)"
            mean, decile, nan = cell[:3]
            return f"{mean:.1f} / {decile:.0%}" + (f" / {nan:.1%} NaN" if nan else "")
        lines.append(f"| {label} | {fmt(before)} | {fmt(after)} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
