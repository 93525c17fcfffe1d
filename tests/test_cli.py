"""The `datacull` command: help, metrics list, Hydra flags, errors as one line with exit 2, README lines."""
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from datacull.cli import quote_brace_patterns
from datacull.config import compose
from datacull.metrics.registry import list_metrics

ROOT = Path(__file__).resolve().parent.parent


def datacull(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "datacull.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def shell_line(line: str, *extra: str, cwd=None):
    """Run a README command line as a POSIX shell would split it (quotes removed), plus `extra` overrides."""
    argv = shlex.split(line)
    assert argv[0] == "datacull"
    return datacull(*argv[1:], *extra, cwd=cwd)


def test_help_lists_stages():
    out = datacull("--help")
    assert out.returncode == 0
    for stage in ("run", "embed", "score", "select", "export", "metrics"):
        assert f"  {stage}" in out.stdout


def test_metrics_lists_every_registered_metric():
    out = datacull("metrics")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert names == [entry.name for entry in list_metrics()]
    assert {"ssp", "supervised_prototypes", "random"} <= set(names)


def test_hydra_cfg_flag_prints_composed_config(tmp_path):
    out = datacull("embed", "--cfg", "job", "data=digits", "encoder=pixels", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: digits" in out.stdout and "work_dir" in out.stdout


def test_unknown_stage_and_bad_input_are_one_line_errors(tmp_path):
    out = datacull("curate")
    assert out.returncode == 2 and "unknown stage 'curate'" in out.stderr
    out = datacull("select", "data=synthetic", f"paths.work_dir={tmp_path}", "select.fraction=2", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "error:" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_pipeline_and_multirun_on_synthetic(tmp_path):
    common = ["data=synthetic", "encoder=pixels", f"paths.work_dir={tmp_path / 'w'}", "metric.ssp.k=4"]
    out = datacull("run", *common, "select.fraction=0.5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kept 128" in out.stdout
    # concise console: no faiss loader lines, no progress bars off a terminal; the details are in the log file
    assert "AVX" not in out.stdout + out.stderr and "it/s" not in out.stderr, out.stderr[-2000:]
    (log_file,) = (tmp_path / "w" / "synthetic-train" / "default" / "logs").glob("run-*.log")
    text = log_file.read_text()
    assert f"log: {log_file}" in out.stdout  # the summary says where the log is
    for expected in ("command: datacull run data=synthetic", "config:", "== datacull run: summary ==",
                     "faiss ", "CPU build", "datacull run finished in"):
        assert expected in text, expected
    out = datacull("select", "-m", *common, "select.policy=keep_easy,ccs", "name=default", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("select: kept 128") == 2




# ------------------------------------------------------------------------------------- config errors

def _one_line_error(out) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stderr.strip()


@pytest.mark.parametrize("override, expected", [
    ("data=nope", ["unknown data option 'nope'", "fashion_mnist", "synthetic", "wds"]),
    ("encoder=pixel", ["unknown encoder option 'pixel'", "did you mean encoder=pixels?"]),
    ("metric=ssp", ["unknown metric option 'ssp'", "default, paper", "did you mean metrics=[ssp]?"]),
    ("data.limt=5", ["unknown config key 'data.limt'", "did you mean data.limit?"]),
    ("data.urls=x.tar", ["'data.urls' belongs to data=wds"]),
    ("name=a=b(", ["cannot parse the override 'name=a=b('", "key='value'"]),
])
def test_config_errors_are_one_line_with_a_hint_and_exit_2(override, expected, tmp_path):
    line = _one_line_error(datacull("embed", "data=synthetic", override, cwd=tmp_path))
    assert line.startswith("datacull embed: error: ")
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "datacull_work").exists()  # nothing ran


def test_unknown_stage_suggests_the_closest(tmp_path):
    line = _one_line_error(datacull("metric", cwd=tmp_path))
    assert "unknown stage 'metric'" in line and "did you mean metrics?" in line


# ------------------------------------------------------------------------------ brace patterns (wds)

@pytest.mark.parametrize("given, expected", [
    (["data.urls=shards/train-{000000..000099}.tar"], ["data.urls='shards/train-{000000..000099}.tar'"]),
    (["data.urls=[a/x-{0..3}.tar,b/y-{a,b}.tar]"], ["data.urls=['a/x-{0..3}.tar','b/y-{a,b}.tar']"]),
    (["data.urls=a-{0..1}.tar,b-{0..1}.tar"], ["data.urls='a-{0..1}.tar','b-{0..1}.tar'"]),  # a -m sweep
    (["+data.test_urls=v-{00..04}.tar"], ["+data.test_urls='v-{00..04}.tar'"]),
    # already quoted, Hydra dicts and interpolations, sweeps and flags are left alone
    (["data.urls='s-{0..3}.tar'", "x={a:1,b:2}", "y=${paths.work_dir}/z", "shard.index=range(0,4)", "-m"],
     ["data.urls='s-{0..3}.tar'", "x={a:1,b:2}", "y=${paths.work_dir}/z", "shard.index=range(0,4)", "-m"]),
])
def test_brace_patterns_are_quoted_for_hydra(given, expected):
    assert quote_brace_patterns(given) == expected


def test_quoted_brace_pattern_composes_to_the_literal_string():
    cfg = compose(["data=wds", "data.urls=shards/train-{000000..000099}.tar",  # compose quotes like the CLI
                   "data.test_urls=[v-{0..1}.tar,w-{a,b}.tar]"])
    assert cfg.data.urls == "shards/train-{000000..000099}.tar"
    assert list(cfg.data.test_urls) == ["v-{0..1}.tar", "w-{a,b}.tar"]


README_WDS = ("datacull run data=wds data.urls='shards/train-{000000..000099}.tar' "
              "data.test_urls='shards/val-{000000..000004}.tar' data.num_classes=1000 data.image_size=224")


def _write_tiny_shards(folder, prefix, count, rng):
    """`count` one-sample shards `{prefix}-{i:06d}.tar`: an 8x8 PNG whose brightness follows its label (i % 4)."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(count):
        with wds.TarWriter(str(folder / f"{prefix}-{shard:06d}.tar")) as sink:
            label = shard % 4
            image = np.full((8, 8, 3), 40 * label, dtype=np.uint8) + rng.integers(0, 30, (8, 8, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            sink.write({"__key__": f"{prefix}{shard:06d}", "png": buffer.getvalue(), "cls": str(label).encode()})


def test_readme_webdataset_line_runs_as_written(tmp_path):
    assert README_WDS in (ROOT / "README.md").read_text()
    rng = np.random.default_rng(0)
    _write_tiny_shards(tmp_path / "shards", "train", 100, rng)
    _write_tiny_shards(tmp_path / "shards", "val", 5, rng)
    # the README line exactly as a shell splits it, then cheap settings for a test
    out = shell_line(README_WDS, "encoder=pixels", "encoder.dim=8", "metric.ssp.k=4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kept 50" in out.stdout
    selection = next((tmp_path / "datacull_work" / "wds-train" / "default" / "selections").glob("*/selection.parquet"))
    frame = pd.read_parquet(selection)
    assert len(frame) == 100 and frame["key"].iloc[0] == "train000000" and frame["key"].iloc[-1] == "train000099"


# ------------------------------------------------------------------------------- multirun, logs

def test_readme_embed_multirun_line_makes_every_shard_with_its_own_log(tmp_path):
    from datacull import layout
    from datacull.stages.embed import load_embeddings

    line = "datacull embed -m shard.index='range(0,4)' shard.count=4"
    assert line in (ROOT / "README.md").read_text() and line in datacull("--help").stdout
    work = tmp_path / "w"
    out = shell_line(line, "data=digits", "encoder=pixels", f"paths.work_dir={work}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = compose(["data=digits", "encoder=pixels", f"paths.work_dir={work}", "shard.count=4"])
    vectors, table = load_embeddings(cfg)
    assert len(table) == 1437 and table["index"].tolist() == list(range(1437)) and vectors.shape[0] == 1437
    logs = sorted((layout.experiment_dir(cfg) / "logs").glob("embed-*.log"))
    assert len(logs) == 4  # one file per job, never shared
    texts = [p.read_text() for p in logs]
    jobs = sorted(re.search(r"overrides: .*shard\.index=(\d)", t).group(1) for t in texts)
    assert jobs == ["0", "1", "2", "3"]
    assert all("embed: wrote" in t for t in texts)
