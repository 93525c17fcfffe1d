"""Benchmarks of the training-dynamics machinery, each side by side in one process.

(a) recorder: one epoch of plain training vs the same epoch (same data, seed, model) with the
    per-example recorder on (correctness, margin, EL2N, predicted class per example, memory-mapped).
    The two variants alternate `--repeats` times; the table gives medians and the overhead
    (target <= 5%). Default: 10,000 Fashion-MNIST training images, ResNet-8 width 16, batch 128.

    .venv/bin/python scripts/bench_metrics.py [--parts recorder] [--n 10000] [--repeats 5] [--device cpu] [--threads 1]

(b) grand: exact per-example gradient norms of one batch (`--grand-n` 128 Fashion-MNIST images,
    ResNet-8 width 16 at init) with torch.func vmap(grad) vs a per-example backward loop: both
    times, the speed-up (target >= 20x, a GPU figure: on a CPU both are compute-bound, see the
    `floor` row) and the largest relative difference of the values.

    .venv/bin/python scripts/bench_metrics.py --parts grand [--grand-n 128] [--grand-chunk 128] [--device cuda]

Each part is a function `bench_<part>(args) -> list[dict]` of table rows, registered in BENCHES.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _cfg(args: argparse.Namespace, *overrides: str):
    from datacull.config import compose

    return compose(["data=fashion_mnist", f"device={args.device}", "model=resnet8", f"model.width={args.width}",
                    "train=cpu", "train.epochs=1", f"train.batch_size={args.batch_size}", *overrides])


def bench_recorder(args: argparse.Namespace) -> list[dict]:
    """Median time of one training epoch without and with the recorder, alternating, same subset and seed.

    Both wall-clock and process CPU time are measured around the whole `train_model` call (data
    loading, the epoch, checkpointing; with the recorder also creating and flushing its arrays). On a
    shared machine the CPU time is the reliable figure: other processes inflate wall time at random.
    """
    from datacull.data.base import build_source
    from datacull.training import train_model

    cfg = _cfg(args)
    source = build_source(cfg.data)
    indices = np.arange(min(args.n, len(source)))
    wall: dict[str, list[float]] = {"plain": [], "recorder": []}
    cpu: dict[str, list[float]] = {"plain": [], "recorder": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            variants = ("plain", "recorder") if repeat % 2 == 0 else ("recorder", "plain")
            for variant in variants:
                run_dir = Path(scratch) / f"{variant}-{repeat}"
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                train_model(cfg, source, indices, seed=0, run_dir=run_dir, record=variant == "recorder")
                wall[variant].append(time.perf_counter() - start_wall)
                cpu[variant].append(time.process_time() - start_cpu)
    what = (f"1 epoch, {len(indices)} Fashion-MNIST, ResNet-8 w{args.width}, batch {args.batch_size}, "
            f"{args.device}, {args.threads} thread(s)")
    rows = []
    for variant, label in (("plain", f"plain training ({what})"), ("recorder", "same epoch + per-example recorder")):
        rows.append({"benchmark": "recorder", "variant": label,
                     "cpu_s (median)": statistics.median(cpu[variant]),
                     "wall_s (median)": statistics.median(wall[variant]),
                     "cpu_s (all)": " ".join(f"{t:.2f}" for t in cpu[variant])})
    overhead_cpu = rows[1]["cpu_s (median)"] / rows[0]["cpu_s (median)"] - 1
    overhead_wall = rows[1]["wall_s (median)"] / rows[0]["wall_s (median)"] - 1
    rows[0]["overhead"] = ""
    rows[1]["overhead"] = f"{100 * overhead_cpu:+.1f}% cpu ({100 * overhead_wall:+.1f}% wall)"
    return rows


def bench_grand(args: argparse.Namespace) -> list[dict]:
    """Exact GraNd on one batch: torch.func (vmap over grad, chunked) vs one backward pass per example.

    Same model (ResNet-8 at initialisation, BatchNorm in eval mode), same `--grand-n` Fashion-MNIST
    images (28x28); the variants alternate `--repeats` times and the medians are compared. The last
    column is the largest relative difference between the two sets of per-example norms. A third row
    times one ordinary batched forward+backward (no per-example gradients): a floor no exact method
    beats, so loop / floor bounds the speed-up possible on the device.
    """
    import torch

    from datacull.data.base import build_source
    from datacull.encoders.base import resolve_device
    from datacull.metrics.context import ScoreContext
    from datacull.metrics.grand import init_model
    from datacull.training.per_example import per_example_grad_norms, per_example_grad_norms_loop
    from datacull.training.trainer import to_input

    with tempfile.TemporaryDirectory() as scratch:
        cfg = _cfg(args, f"paths.work_dir={scratch}")
        source = build_source(cfg.data)
        ctx = ScoreContext(cfg, source, np.arange(args.grand_n))
        device = resolve_device(args.device)
        model = init_model(ctx, 0, device)
    images = np.stack([source.load(i) for i in ctx.indices])
    x = to_input(torch.from_numpy(images).permute(0, 3, 1, 2), device)
    y = torch.from_numpy(ctx.labels).to(device)
    chunk = args.grand_chunk or None
    variants = {"vmap": lambda: per_example_grad_norms(model, x, y, chunk_size=chunk),
                "loop": lambda: per_example_grad_norms_loop(model, x, y),
                "floor": lambda: _batched_backward(model, x, y)}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    values: dict[str, torch.Tensor] = {}
    for name, fn in variants.items():  # warm-up (allocator, kernels)
        fn()
    for repeat in range(args.repeats):
        for name in (("vmap", "loop", "floor") if repeat % 2 == 0 else ("floor", "loop", "vmap")):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            values[name] = variants[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall[name].append(time.perf_counter() - start)
    rel = ((values["vmap"] - values["loop"]).abs() / values["loop"]).max().item()
    what = (f"{args.grand_n} Fashion-MNIST 28x28, ResNet-8 w{args.width} "
            f"({sum(p.numel() for p in model.parameters())} params), {args.device}, {args.threads} thread(s)")
    fast, slow = statistics.median(wall["vmap"]), statistics.median(wall["loop"])
    return [
        {"benchmark": "grand", "variant": f"per-example backward loop ({what})", "wall_s (median)": slow,
         "wall_s (all)": " ".join(f"{t:.3f}" for t in wall["loop"]), "speed-up": "", "max rel diff": ""},
        {"benchmark": "grand", "variant": f"torch.func vmap(grad), chunk {chunk or args.grand_n}", "wall_s (median)": fast,
         "wall_s (all)": " ".join(f"{t:.3f}" for t in wall["vmap"]), "speed-up": f"{slow / fast:.1f}x",
         "max rel diff": f"{rel:.1e}"},
        {"benchmark": "grand", "variant": "floor: one batched forward+backward, no per-example gradients",
         "wall_s (median)": statistics.median(wall["floor"]), "wall_s (all)": " ".join(f"{t:.3f}" for t in wall["floor"]),
         "speed-up": f"{slow / statistics.median(wall['floor']):.1f}x (bound)", "max rel diff": ""},
    ]


def _batched_backward(model, x, y):
    """Gradient of the summed loss of the whole batch in one pass (BatchNorm in eval mode, like GraNd)."""
    import torch.nn.functional as F

    model.eval()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    model.zero_grad(set_to_none=True)


BENCHES = {"recorder": bench_recorder, "grand": bench_grand}


def markdown(rows: list[dict]) -> str:
    """Rows as a markdown table (floats with 3 decimals)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(BENCHES), help=f"comma-separated subset of {list(BENCHES)}")
    parser.add_argument("--n", type=int, default=10_000, help="training examples")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per variant (median reported)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = stable timings)")
    parser.add_argument("--grand-n", type=int, default=128, help="examples in the GraNd batch")
    parser.add_argument("--grand-chunk", type=int, default=128, help="vmap chunk_size for GraNd (0 = whole batch)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for part in args.parts.split(","):
        rows += BENCHES[part.strip()](args)
    print(markdown(rows))


if __name__ == "__main__":
    main()
