"""Data-parallel training under torchrun (datacull/training/distributed.py), on CPU with gloo.

Run as a script by torchrun (see test_ddp_steps_equal_the_single_process_steps), this file trains
the BatchNorm-free `ddp_test_mlp` model with train_model on every rank.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict
from torch import nn

from datacull.errors import DatacullError
from datacull.training.distributed import DistInfo, rank_order
from datacull.training.models import ClassifierNet, register_model

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@register_model("ddp_test_mlp", "test only: flatten + linear + ReLU (no BatchNorm, so DDP = one big batch)")
def ddp_test_mlp(model_cfg, num_classes: int, in_channels: int, image_size: int) -> ClassifierNet:
    features = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 16), nn.ReLU())
    return ClassifierNet(features, 16, num_classes, in_channels, image_size)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _mlp_cfg(work: Path):
    from datacull.config import compose

    cfg = compose(["data=synthetic", "device=cpu", "train.epochs=2", "train.batch_size=32", "train.augment=none",
                   "train.lr=0.05", f"paths.work_dir={work}"])
    with open_dict(cfg):
        cfg.model.name = "ddp_test_mlp"
    return cfg


def test_rank_slices_rebuild_each_global_batch():
    """Global step k of W ranks (per-rank batch B/W) trains exactly single-process batch k; the order is
    padded to a multiple of W by repeating its start (DistributedSampler semantics)."""
    order = np.random.default_rng(0).permutation(23)
    world, batch = 3, 6
    shares = [rank_order(order, DistInfo(r, world)) for r in range(world)]
    assert {len(s) for s in shares} == {8}  # ceil(23 / 3)
    padded = np.concatenate([order, order[:1]])
    for k in range(4):  # ceil(23 / 6) steps, as in one process
        step = np.concatenate([s[k * 2:(k + 1) * 2] for s in shares])
        assert sorted(step) == sorted(padded[k * batch:(k + 1) * batch])
    assert rank_order(order, DistInfo()) is order


def test_batch_that_does_not_split_over_the_ranks_is_one_error(make_cfg, monkeypatch):
    from datacull.stages import get_stage

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DatacullError, match=r"train\.batch_size=3 cannot be split evenly over 2 processes.*"
                                            r"multiple of 2"):
        get_stage("train")(make_cfg("train.batch_size=3"))


def test_torchrun_train_writes_one_row_and_one_run(tmp_path):
    scores = tmp_path / "s.csv"
    pd.DataFrame({"key": [f"synthetic/train/{i:06d}" for i in range(256)], "s": np.arange(256.0)}).to_csv(
        scores, index=False)
    work = tmp_path / "work"
    out = subprocess.run([*TORCHRUN, "-m", "datacull.cli", "train", "data=synthetic", f"select.scores={scores}",
                          "select.metric=s", "select.fraction=0.5", "train.epochs=1", "device=cpu",
                          f"paths.work_dir={work}"], capture_output=True, text=True, cwd=tmp_path, env=_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(work.glob("*/*/results/rows/*.json"))
    assert len(rows) == 1
    row = json.loads(rows[0].read_text())
    assert row["n_train"] == 128 and row["steps"] == 1  # 128 kept / global batch 128 = one optimizer step
    run_dir = Path(row["run_dir"])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["finished"] and [h["epoch"] for h in info["history"]] == [1]
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json", "weights-epoch0000.pt", "weights-epoch0001.pt"]
    assert len(list(work.glob("*/runs/*/*"))) == 1  # one run folder, written by rank 0 only
    assert out.stdout.count("test error") == 1  # rank 0 alone evaluates and logs


def test_ddp_steps_equal_the_single_process_steps(tmp_path):
    """Without BatchNorm or augmentation, 2 ranks x 16 examples with averaged gradients take the same
    SGD steps as one process with batch 32: same weights, same per-example record (gathered to rank 0)."""
    from datacull.data.base import build_source
    from datacull.training.trainer import train_model

    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    out = subprocess.run([*TORCHRUN, __file__, str(tmp_path), str(ddp_dir)], capture_output=True, text=True,
                         cwd=tmp_path, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = _mlp_cfg(tmp_path / "work")
    source = build_source(cfg.data)
    single = train_model(cfg, source, np.arange(100), seed=3, run_dir=single_dir)
    ddp_weights = torch.load(ddp_dir / "weights-epoch0002.pt", weights_only=True)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(ddp_weights["classifier.weight"],
                           torch.load(ddp_dir / "weights-epoch0000.pt", weights_only=True)["classifier.weight"])
    from datacull.training.recorder import Recorder

    ddp_record = Recorder.open(ddp_dir / "record")
    for field in ("correct", "pred"):
        np.testing.assert_array_equal(ddp_record.field(field), single.recorder.field(field))
    np.testing.assert_allclose(ddp_record.field("margin"), single.recorder.field("margin"), rtol=1e-3, atol=1e-4)
    ddp_loss = [h["loss"] for h in json.loads((ddp_dir / "run.json").read_text())["history"]]
    np.testing.assert_allclose(ddp_loss, [h["loss"] for h in single.history], rtol=1e-4)


if __name__ == "__main__":  # one rank of test_ddp_steps_equal_the_single_process_steps
    from datacull.data.base import build_source
    from datacull.training.trainer import train_model

    torch.set_num_threads(1)
    cfg = _mlp_cfg(Path(sys.argv[1]) / "work")
    train_model(cfg, build_source(cfg.data), np.arange(100), seed=3, run_dir=Path(sys.argv[2]))
