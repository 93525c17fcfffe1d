"""Bad input: one test per row of README's "Bad input: what datacull does" table that is not covered elsewhere.

Each test feeds one kind of hostile or broken input and checks the promised behaviour: one clear
DatacullError (exit 2 on the command line) naming what is wrong and how to fix it, or the example
skipped with a reason that the manifest accounts for; never a traceback, a silent NaN or a lost key.
Rows already covered by other test files are listed in the README table with those tests.
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import webdataset as wds
from PIL import Image

from datacull import layout
from datacull.config import compose
from datacull.data.base import CorruptExample, build_source
from datacull.errors import DatacullError
from datacull.stages.embed import embed
from datacull.stages.export import export
from datacull.stages.score import score
from datacull.stages.select import select
from datacull.stages.verify import verify_paths

ROOT = Path(__file__).resolve().parent.parent


def png(shape=(4, 4), mode=None, value=None, fmt="PNG") -> bytes:
    rng = np.random.default_rng(len(shape) * 7 + shape[0])
    array = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path: Path, samples: list[dict]) -> Path:
    """A webdataset shard of `samples` ({"__key__": ..., ext: bytes}) written with webdataset's TarWriter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def grey_samples(n: int, prefix: str = "k", start: int = 0) -> list[dict]:
    return [{"__key__": f"{prefix}{i:03d}", "png": png(value=(i * 37) % 255), "cls": str(i % 2).encode()}
            for i in range(start, start + n)]


def wds_cfg(make_cfg, urls, *overrides):
    return make_cfg("data=wds", f"data.urls={urls}", "metrics=[random]", "select.fraction=0.5", *overrides)


def cli(*args, cwd=None, code=None):
    """Run `datacull ARGS` (or python code when `code` is given) and return the completed process."""
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "datacull.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_line_exit_2(out) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stderr.strip()


# ------------------------------------------------------------------------------------- labels

@pytest.mark.parametrize("payload, message", [
    (b"99999999999999999999", "larger than 2147483647"),  # int64 overflow
    (b"1_0", "not an integer class label"),  # int() would read it as 10
    (b"\xff\xfe", "not an integer class label"),
    (b"-5", "negative label -5"),
])
def test_cls_label_that_is_not_a_class_index(tmp_path, payload, message):
    shard = write_tar(tmp_path / "a.tar", [{"__key__": "x", "png": png(), "cls": payload}])
    with pytest.raises(DatacullError, match=rf"a\.tar member x\.cls .*{message}"):
        build_source(compose(["data=wds", f"data.urls={shard}", "data.index_cache=null"]).data)


def test_duplicate_keys_across_two_shards(tmp_path):
    a = write_tar(tmp_path / "s-000000.tar", grey_samples(3))
    write_tar(tmp_path / "s-000001.tar", grey_samples(3, start=2))  # k002 is in both
    with pytest.raises(DatacullError, match=r"1 duplicate keys \(first: \['k002'\]\).*unique key"):
        build_source(compose(["data=wds", f"data.urls='{a.parent}/s-{{000000..000001}}.tar'"]).data)


# ------------------------------------------------------------------------- images and members

def test_sample_without_an_image_or_with_a_symlinked_image_is_skipped_with_a_reason(make_cfg, tmp_path):
    path = tmp_path / "in-000000.tar"
    write_tar(path, grey_samples(10) + [{"__key__": "caption", "txt": b"no image", "cls": b"1"}])
    with tarfile.open(path, "a") as tar:  # k900: a .cls plus a symlinked image; k901: only a symlinked image
        for name in ("k900.png", "k901.png"):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
            if name == "k900.png":
                info = tarfile.TarInfo("k900.cls")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"0"))
    cfg = wds_cfg(make_cfg, path)
    score(cfg)
    select(cfg)
    manifest = json.loads(export(cfg)["manifest"].read_text())
    reasons = {row["key"]: row["reason"] for row in manifest["skipped"]}
    assert set(reasons) == {"caption", "k900", "k901"}  # 13 input keys: none vanished
    assert all(r.startswith("skipped: no image member: ") for r in reasons.values())
    assert "link, which is never followed" in reasons["k900"] and "link" in reasons["k901"]
    assert manifest["counts"]["input"] == 13 and manifest["counts"]["skipped"] == 3
    assert manifest["reasons"]["skipped: no image member"] == 3
    assert verify_paths([layout.selection_dir(cfg)]).ok


@pytest.mark.parametrize("mode_or_size", ["RGBA", "P", "CMYK", "I;16", "LA", "1", "size"])
def test_image_of_another_mode_or_size_is_converted_and_shipped_untouched(make_cfg, tmp_path, mode_or_size):
    samples = grey_samples(6)
    if mode_or_size == "size":
        odd = png((9, 5))
    elif mode_or_size == "I;16":
        buffer = io.BytesIO()
        Image.fromarray(np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000).save(buffer, format="PNG")
        odd = buffer.getvalue()
    else:
        odd = png((4, 4, 3), mode=mode_or_size, fmt="JPEG" if mode_or_size == "CMYK" else "PNG")
    samples[2] = {"__key__": "k002", "jpg" if mode_or_size == "CMYK" else "png": odd, "cls": b"0"}
    shard = write_tar(tmp_path / "in.tar", samples)
    cfg = wds_cfg(make_cfg, shard, "data.image_size=4", "data.channels=1", "select.fraction=1.0")
    source = build_source(cfg.data)
    assert source.load(2).shape == (4, 4, 1) and source.load(2).dtype == np.uint8
    score(cfg)
    select(cfg)
    paths = export(cfg)
    exported = {s["__key__"]: s for s in wds.WebDataset(str(next(paths["shards_dir"].glob("*.tar"))), shardshuffle=False)}
    assert exported["k002"].get("png", exported["k002"].get("jpg")) == odd  # the original bytes, untouched
    if mode_or_size == "size":  # without data.image_size an embedding needs one size: one clear error
        plain = make_cfg("data=wds", f"data.urls={shard}", "paths.work_dir=" + str(tmp_path / "w2"))
        with pytest.raises(DatacullError, match=r"differ in size; set encoder.image_size=\[H,W\] \(or data.image_size\)"):
            embed(plain)


def test_decompression_bomb_is_skipped_with_a_reason(make_cfg, tmp_path, monkeypatch):
    shard = write_tar(tmp_path / "in.tar", grey_samples(5) + [{"__key__": "bomb", "png": png((40, 40)), "cls": b"0"}])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 40x40 > 2x the limit: PIL refuses it as a bomb
    cfg = wds_cfg(make_cfg, shard, "data.image_size=4", "data.channels=1")
    score(cfg)
    selection = pd.read_parquet(select(cfg)["selection"])
    reason = selection.set_index("key").loc["bomb", "reason"]
    assert reason.startswith("skipped: corrupt image: ") and "DecompressionBombError" in reason


def test_truncated_and_foreign_shards(tmp_path):
    good = write_tar(tmp_path / "t.tar", grey_samples(8))
    data = good.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    cut = build_source(compose(["data=wds", f"data.urls={tmp_path / 'cut.tar'}", "data.index_cache=null"]).data)
    outcomes = []
    for i in range(len(cut)):
        try:
            cut.load(i)
            outcomes.append("ok")
        except CorruptExample as exc:
            outcomes.append(str(exc))
    assert 0 < outcomes.count("ok") < 8 and all(o == "ok" or "cut.tar" in o for o in outcomes)
    import gzip

    (tmp_path / "z.tar").write_bytes(gzip.compress(data))
    with pytest.raises(DatacullError, match="uncompressed tar"):
        build_source(compose(["data=wds", f"data.urls={tmp_path / 'z.tar'}", "data.index_cache=null"]).data)
    with pytest.raises(DatacullError, match="local tar shards only"):
        build_source(compose(["data=wds", "data.urls='pipe:curl -s http://x/s.tar'"]).data)


def test_skip_reasons_hold_no_object_reprs_so_manifests_repeat(make_cfg, tmp_path):
    shard = write_tar(tmp_path / "in.tar", grey_samples(8) + [{"__key__": "junk", "png": b"not an image", "cls": b"0"}])
    manifests = []
    for work in ("a", "b"):
        cfg = wds_cfg(make_cfg, shard, f"paths.work_dir={tmp_path / work}")
        score(cfg)
        select(cfg)
        manifest = json.loads(export(cfg)["manifest"].read_text())
        manifests.append((manifest["skipped"], manifest["shards"]))
    assert "object at 0x" not in json.dumps(manifests[0]) and "UnidentifiedImageError" in json.dumps(manifests[0])
    assert manifests[0] == manifests[1]


# --------------------------------------------------------------------------------- work dir, disk

@pytest.mark.parametrize("stage", ["embed", "score", "select", "export", "train", "run"])
def test_work_dir_that_is_a_file(make_cfg, tmp_path, stage):
    from datacull.stages import get_stage

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    overrides = [f"paths.work_dir={blocker}", "metrics=[random]"]
    if stage == "select":  # external scores: select is the first stage that writes
        csv = tmp_path / "s.csv"
        pd.DataFrame({"key": _keys(make_cfg), "s": np.arange(256.0)}).to_csv(csv, index=False)
        overrides += [f"select.scores={csv}", "select.metric=s"]
    with pytest.raises(DatacullError, match=r"(cannot create directory .*paths\.work_dir|no (selection|scores) at .*"
                                            r"run `datacull (select|score)` first)"):
        get_stage(stage)(make_cfg(*overrides))


def test_work_dir_that_is_a_file_on_the_command_line(tmp_path):
    (tmp_path / "f").write_text("x")
    line = one_line_exit_2(cli("score", "data=synthetic", "metrics=[random]", f"paths.work_dir={tmp_path / 'f'}",
                               cwd=tmp_path))
    assert "cannot create directory" in line and "set paths.work_dir to a writable folder" in line


def test_read_only_work_dir(make_cfg, tmp_path, monkeypatch):
    work = tmp_path / "ro"
    work.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the permission check see a read-only folder
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(str(work)) else real(p, mode, **k))
        (work / "synthetic-train" / "default").mkdir(parents=True)
    else:
        os.chmod(work, 0o555)
    try:
        with pytest.raises(DatacullError, match=r"(not writable|cannot create directory).*paths\.work_dir"):
            score(make_cfg(f"paths.work_dir={work}", "metrics=[random]"))
    finally:
        os.chmod(work, 0o755)


def _litter(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


def test_disk_full_during_export_leaves_nothing_half_written(make_cfg, monkeypatch):
    import datacull.export as export_module

    cfg = make_cfg("metrics=[random]", "export.maxcount=20")
    score(cfg)
    select(cfg)
    real = export_module.ShardSequence.write
    calls = []

    def full(self, sample):
        calls.append(1)
        if len(calls) > 30:  # after the first shard was finished
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "x.tar"))
        real(self, sample)

    monkeypatch.setattr(export_module.ShardSequence, "write", full)
    with pytest.raises(OSError, match="No space left"):
        export(cfg)
    assert not layout.shards_dir(cfg).exists() and _litter(Path(cfg.paths.work_dir)) == []
    assert sorted(p.name for p in layout.selection_dir(cfg).iterdir()) == ["selection.parquet"]


def test_disk_full_on_the_command_line_is_one_line(tmp_path):
    code = ("import errno, sys\nimport datacull.export as e\n"
            "def full(self, sample):\n    raise OSError(errno.ENOSPC, 'No space left on device', str(self.directory))\n"
            "e.ShardSequence.write = full\nfrom datacull.cli import main\n"
            f"main(['run', 'data=synthetic', 'encoder=pixels', 'metrics=[random]', 'paths.work_dir={tmp_path / 'w'}'])")
    line = one_line_exit_2(cli(code=code, cwd=tmp_path))
    assert "datacull run: error: No space left on device writing" in line and "nothing half-written" in line
    assert _litter(tmp_path / "w") == []


# ----------------------------------------------------------------------------------- scores files

def _keys(make_cfg) -> list[str]:
    return build_source(make_cfg().data).keys


def test_empty_csv_scores_file(make_cfg, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatacullError, match=r"cannot read select.scores file .*empty\.csv as csv"):
        select(make_cfg(f"select.scores={tmp_path / 'empty.csv'}", "select.metric=mine"))


def test_external_scores_with_duplicate_or_missing_keys(make_cfg, tmp_path):
    keys = _keys(make_cfg)
    path = tmp_path / "dup.csv"
    pd.DataFrame({"key": keys + [keys[5]], "mine": np.arange(257.0)}).to_csv(path, index=False)
    with pytest.raises(DatacullError, match=r"lists 1 keys twice \(first: \['synthetic/train/000005'\]\)"):
        select(make_cfg(f"select.scores={path}", "select.metric=mine"))
    pd.DataFrame({"key": keys[:-3], "mine": np.arange(253.0)}).to_csv(path, index=False)
    with pytest.raises(DatacullError, match=r"0 score keys not in the dataset .*3 dataset keys without a score"):
        select(make_cfg(f"select.scores={path}", "select.metric=mine"))


def test_external_scores_with_nan_are_ranked_as_the_median_or_skipped(make_cfg, tmp_path):
    keys = _keys(make_cfg)
    values = np.arange(256.0)
    values[[4, 9]] = np.nan
    values[7] = np.inf
    path = tmp_path / "nan.csv"
    pd.DataFrame({"key": keys, "mine": values}).to_csv(path, index=False)
    selection = pd.read_parquet(select(make_cfg(f"select.scores={path}", "select.metric=mine"))["selection"])
    assert selection.loc[[4, 7, 9], "score"].tolist() == [float(np.median(np.delete(values, [4, 7, 9])))] * 3
    skipped = pd.read_parquet(select(make_cfg(f"select.scores={path}", "select.metric=mine",
                                              "select.missing_score=skip"))["selection"])
    assert skipped.loc[[4, 7, 9], "reason"].tolist() == ["skipped: no mine score"] * 3
    assert skipped["kept"].sum() == 253 // 2


@pytest.mark.parametrize("artifact", ["scores", "selection", "embeddings"])
def test_truncated_artifact_is_one_clear_error(make_cfg, artifact):
    cfg = make_cfg()
    score(cfg)
    select(cfg)
    path = {"scores": layout.scores_path(cfg), "selection": layout.selection_path(cfg),
            "embeddings": next(layout.embeddings_dir(cfg).glob("*.npy"))}[artifact]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    run, message = {"scores": (lambda: select(make_cfg("select.fraction=0.3")), "delete it and run `datacull score`"),
                    "selection": (lambda: export(cfg), "cannot read the selection .*run `datacull select` again"),
                    "embeddings": (lambda: score(make_cfg("metric.ssp.niter=3")),
                                   "cannot read the embeddings shard .*run `datacull embed` again")}[artifact]
    with pytest.raises(DatacullError, match=message):
        run()


@pytest.mark.parametrize("metric", ["ssp", "supervised_prototypes"])
def test_nan_or_inf_in_stored_embeddings_are_skipped_with_a_reason(make_cfg, metric, caplog):
    cfg = make_cfg(f"metrics=[{metric}]")
    embed(cfg)
    npy = next(layout.embeddings_dir(cfg).glob("*.npy"))
    rows = np.load(npy)
    rows[3, 0], rows[10, 5] = np.nan, np.inf
    np.save(npy, rows)
    scores = pd.read_parquet(score(cfg)["scores"])
    assert scores.loc[[3, 10], "skip_reason"].tolist() == ["skipped: non-finite embedding (NaN/inf)"] * 2
    others = scores.drop(index=[3, 10])
    assert np.isfinite(others[metric]).all() and scores.loc[[3, 10], metric].isna().all()
    assert "2 stored embeddings hold NaN/inf" in caplog.text
    selection = pd.read_parquet(select(cfg)["selection"])
    assert (selection.loc[[3, 10], "rank"] == -1).all() and not selection.loc[[3, 10], "kept"].any()
    from datacull.metrics.context import ScoreContext
    from datacull.metrics.registry import get_metric

    ctx = ScoreContext(cfg=cfg, source=build_source(cfg.data), indices=np.arange(256), embeddings_loader=lambda: rows)
    with pytest.raises(DatacullError, match=f"{metric}: 2 of 256 embedding rows hold NaN/inf"):
        get_metric(metric).obj(ctx, ctx.params(metric))  # a direct caller gets one clear error, not a faiss abort


def test_ssp_k_larger_than_the_data_is_rejected_before_embedding(make_cfg, monkeypatch):
    import datacull.stages.embed as embed_module

    monkeypatch.setattr(embed_module, "embed", lambda *a, **k: pytest.fail("embedded before checking k"))
    with pytest.raises(DatacullError, match="k=300 needs at least k examples.*only 256"):
        score(make_cfg("metric.ssp.k=300"))


# -------------------------------------------------------------------------------- checkpoints

class NotWeights:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_truncated_or_not_weights_only_checkpoint(tmp_path, caplog):
    from datacull.training import trainer

    model = torch.nn.Linear(3, 2)
    good = tmp_path / "run" / "weights-epoch1.pt"
    good.parent.mkdir()
    torch.save(model.state_dict(), good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatacullError, match=r"cannot load model weights .*weights-epoch1\.pt.*delete"):
        trainer._load_weights(model, good)
    torch.save({"weight": NotWeights()}, good)
    with pytest.raises(DatacullError, match=r"cannot load model weights .*UnpicklingError"):
        trainer._load_weights(model, good)
    # a damaged or unsafe resume checkpoint is ignored (training starts over), never unpickled
    torch.save({"fingerprint": "x", "model": NotWeights()}, tmp_path / "run" / trainer.CHECKPOINT_FILE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert trainer._resume(tmp_path / "run", "x", model, optimizer, record=False)[0] == 0
    assert "ignoring unreadable checkpoint" in caplog.text


def test_encoder_checkpoint_that_is_not_weights_only(tmp_path):
    from omegaconf import OmegaConf

    from datacull.data.base import ArraySource
    from datacull.encoders.base import build_encoder

    checkpoint = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": NotWeights()}}, checkpoint)
    cfg = OmegaConf.create({"name": "timm", "model_name": "test_resnet", "pretrained": False, "image_size": 32,
                            "checkpoint": str(checkpoint), "checkpoint_prefix": "module."})
    source = ArraySource("a", "train", np.zeros((4, 8, 8, 1), np.uint8), np.arange(4) % 2, 2)
    with pytest.raises(DatacullError, match=r"cannot read checkpoint .*evil\.pth"):
        build_encoder(cfg, seed=0).prepare(source, tmp_path / "cache", torch.device("cpu"))


# ------------------------------------------------------------------------------ selection, sweep

def test_a_class_that_loses_every_example_is_warned_and_reported(make_cfg, tmp_path, caplog):
    source = build_source(make_cfg().data)
    scores = np.where(source.labels == 0, 0.0, 1.0) + np.arange(len(source)) * 1e-6  # class 0 is the easiest
    path = tmp_path / "s.csv"
    pd.DataFrame({"key": source.keys, "mine": scores}).to_csv(path, index=False)
    cfg = make_cfg(f"select.scores={path}", "select.metric=mine", "select.fraction=0.5")
    with caplog.at_level(logging.WARNING):
        select(cfg)
    assert "1 classes lose every example under this selection (labels [0])" in caplog.text
    from datacull.store import parquet_config

    assert parquet_config(layout.selection_path(cfg))["summary"]["emptied_classes"] == [0]
    per_class = json.loads(export(cfg)["manifest"].read_text())["per_class"]
    assert [(r["label"], r["after"]) for r in per_class if r["after"] == 0] == [(0, 0)]


def test_ctrl_c_during_a_sweep_keeps_finished_runs_with_one_clean_message(tmp_path):
    code = f"""
import datacull.stages.train as t
real, runs = t.train_model, []
def once(*args, **kwargs):
    runs.append(1)
    if len(runs) == 2:
        raise KeyboardInterrupt
    return real(*args, **kwargs)
t.train_model = once
from datacull.cli import main
main(['sweep', 'data=synthetic', 'encoder=pixels', 'metric.ssp.k=4', 'device=cpu', 'paths.work_dir={tmp_path / 'w'}',
      'sweep.metrics=[random]', 'sweep.policies=[keep_hard]', 'sweep.fractions=[0.5,1.0]', 'sweep.sizes=[64]',
      'sweep.report=false', 'model=resnet8', 'model.width=4', 'train.epochs=1', 'train.batch_size=64'])
"""
    out = cli(code=code, cwd=tmp_path)
    assert out.returncode == 130, out.stderr[-3000:]
    message = ("datacull sweep: interrupted; everything finished so far is kept (outputs are written atomically): "
               "run the same command again to resume")
    assert out.stderr.count(message) == 1 and "Traceback" not in out.stderr and "Error" not in out.stderr
    rest = re.sub(r"[^\r\n]*%\|[^\r\n]*?(?=datacull sweep:|[\r\n]|$)", "", out.stderr.replace("\x1b[A", ""))
    assert [line for line in re.split(r"[\r\n]", rest) if line.strip()] == [message], rest  # besides progress bars
    rows = list((tmp_path / "w").rglob("results/rows/*.json"))
    assert len(rows) == 1  # the first run finished and is kept
    assert verify_paths([tmp_path / "w"]).ok


def test_readme_table_lists_every_test_of_this_file():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("Bad input: what datacull does"):]
    names = [name for name in globals() if name.startswith("test_") and name != "test_readme_table_lists_every_test_of_this_file"]
    missing = [name for name in names if name not in table]
    assert not missing, missing
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| input"))
    rows = [line for line in lines[start + 2:] if line.strip()]
    rows = rows[: next((i for i, line in enumerate(rows) if not line.startswith("| ")), len(rows))]
    assert len(rows) >= 30 and all(line.count(" | ") == 2 for line in rows)
    for module, name in re.findall(r"`(test_\w+)::(test_\w+)`", "\n".join(rows)):  # tests of other files exist
        assert f"def {name}(" in (ROOT / "tests" / f"{module}.py").read_text(), f"{module}::{name}"
