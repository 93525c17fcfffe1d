"""How useful and how costly is each encoder? Prints a markdown table, one row per encoder config.

For each encoder (a comma-separated list of Hydra overrides, e.g. `encoder=simclr,encoder.epochs=4`):
prepare it on the train split (fit PCA / train SimCLR, from scratch in a fresh cache unless
--work-dir is given), embed the train and test splits exactly as the embed stage does, then measure
- kNN accuracy: each test image gets the majority label of its k nearest train embeddings (cosine);
- NMI between the classes and spherical k-means clusters (k = number of classes) of the train
  embeddings — the clustering SSP uses (datacull.kmeans);
- optionally (--probe) a linear probe: logistic regression on standardised embeddings.
Times are wall and process-CPU seconds (the machine may be shared: the load average is printed).

    .venv/bin/python scripts/eval_encoders.py                        # pixels vs simclr, Fashion-MNIST
    .venv/bin/python scripts/eval_encoders.py encoder=pixels encoder=simclr,encoder.epochs=2 --limit 20000
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import faiss
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.preprocessing import StandardScaler

from datacull import layout
from datacull.config import compose
from datacull.data.base import DataSource, SubsetSource, build_source
from datacull.data.loader import ExampleDataset, make_loader
from datacull.encoders.base import Encoder, build_encoder, resolve_device
from datacull.kmeans import l2_normalize, nearest_centroid, train_spherical_kmeans


def embed_all(encoder: Encoder, source: DataSource, batch_size: int, num_workers: int,
              device: torch.device) -> np.ndarray:
    """Embeddings of every example of `source`, the way the embed stage computes them."""
    dataset = ExampleDataset(source, None, size=encoder.input_size, channels=encoder.input_channels)
    rows = []
    with torch.inference_mode():
        for images, _, _, _ in make_loader(dataset, batch_size, num_workers):
            rows.append(encoder.encode(images.to(device)).float().cpu().numpy())
    return np.concatenate(rows)


def knn_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                 k: int) -> float:
    """Accuracy of a k-nearest-neighbour majority vote under cosine similarity."""
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(l2_normalize(train))
    _, neighbours = index.search(l2_normalize(test), k)
    votes = train_labels[neighbours]
    num_classes = int(train_labels.max()) + 1
    counts = np.stack([(votes == c).sum(axis=1) for c in range(num_classes)], axis=1)
    return float((counts.argmax(axis=1) == test_labels).mean())


def cluster_nmi(train: np.ndarray, labels: np.ndarray, k: int, seed: int) -> float:
    """NMI between labels and spherical k-means clusters of the embeddings."""
    centroids = train_spherical_kmeans(train, k, seed=seed)
    assign, _ = nearest_centroid(train, centroids)
    return float(normalized_mutual_info_score(labels, assign))


def probe_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                   samples: int, seed: int) -> float:
    """Test accuracy of logistic regression trained on a seeded subset of standardised embeddings."""
    pick = np.random.default_rng(seed).permutation(len(train))[:samples]
    scaler = StandardScaler().fit(train[pick])
    model = LogisticRegression(max_iter=300).fit(scaler.transform(train[pick]), train_labels[pick])
    return float(model.score(scaler.transform(test), test_labels))


def split_overrides(spec: str) -> list[str]:
    """Split `a=1,b=[2,3]` at the commas that are not inside brackets."""
    parts, depth, current = [], 0, ""
    for char in spec:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoders", nargs="*", default=["encoder=pixels", "encoder=simclr"],
                        help="comma-separated Hydra overrides per encoder config")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    parser.add_argument("--k", type=int, default=10, help="neighbours for kNN accuracy")
    parser.add_argument("--probe", type=int, default=0, help="linear probe on this many train embeddings (0 = off)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work-dir", default=None, help="encoder cache location (default: a fresh temp dir)")
    args = parser.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="datacull-eval-")
    device = resolve_device(args.device)
    print(f"data={args.data} limit={args.limit} device={device} torch threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} load average at start={os.getloadavg()[0]:.1f}")
    header = ("| encoder | dim | prepare s (wall / cpu) | embed train s (wall / cpu) | total wall s "
              f"| kNN@{args.k} acc | NMI |")
    header += " probe acc |" if args.probe else ""
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for spec in args.encoders:
        overrides = split_overrides(spec)
        cfg = compose([f"data={args.data}", f"paths.work_dir={work}", *overrides])
        train = build_source(cfg.data)
        if args.limit:
            train = SubsetSource(train, np.arange(min(args.limit, len(train))))
        test = build_source(cfg.data, cfg.data.test_split)
        encoder = build_encoder(cfg.encoder, int(cfg.seed))
        batch, workers = int(cfg.encoder.get("batch_size", 256)), int(cfg.encoder.get("num_workers", 0))
        wall, cpu = time.perf_counter(), time.process_time()
        encoder.prepare(train, layout.encoder_cache_dir(cfg), device)
        prepare_wall, prepare_cpu = time.perf_counter() - wall, time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        train_rows = embed_all(encoder, train, batch, workers, device)
        embed_wall, embed_cpu = time.perf_counter() - wall, time.process_time() - cpu
        test_rows = embed_all(encoder, test, batch, workers, device)
        acc = knn_accuracy(train_rows, train.labels, test_rows, test.labels, args.k)
        nmi = cluster_nmi(train_rows, train.labels, train.num_classes, int(cfg.seed))
        row = (f"| {' '.join(overrides)} | {encoder.dim} | {prepare_wall:.0f} / {prepare_cpu:.0f} | "
               f"{embed_wall:.0f} / {embed_cpu:.0f} | {prepare_wall + embed_wall:.0f} | {acc:.4f} | {nmi:.3f} |")
        if args.probe:
            probe = probe_accuracy(train_rows, train.labels, test_rows, test.labels, args.probe, int(cfg.seed))
            row += f" {probe:.4f} |"
        lines.append(row)
        print(row, flush=True)
    print(f"\nload average at end={os.getloadavg()[0]:.1f}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
