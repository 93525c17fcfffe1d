"""Plugins: a user's own metric, defined outside datacull, used from the CLI (config list and entry points)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from datacull.errors import DatacullError
from datacull.plugins import import_plugin

PLUGIN = textwrap.dedent('''
    """A planted metric: difficulty = scale * (example index) + label, so the test can recompute it."""
    import numpy as np

    from datacull.metrics import register_metric


    @register_metric("{name}", "planted test metric", needs="none", requires_labels=False, citation="test")
    def planted(ctx, params):
        return float(params.get("scale", 1.0)) * ctx.indices.astype(np.float64) + ctx.labels
''')


def run_cli(*args, cwd, pythonpath):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "datacull.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_metric_from_a_plugin_module_is_scored_and_selected_through_the_cli(tmp_path):
    (tmp_path / "plugs").mkdir()
    (tmp_path / "plugs" / "my_plugin.py").write_text(PLUGIN.format(name="my_metric"))
    work = tmp_path / "w"
    common = ["data=synthetic", f"paths.work_dir={work}", "metrics=[my_metric]", "plugins=[my_plugin]"]
    out = run_cli("score", *common, "+metric.my_metric.scale=2", cwd=tmp_path, pythonpath=tmp_path / "plugs")
    assert out.returncode == 0, out.stderr[-3000:]
    scores = pd.read_parquet(work / "synthetic-train" / "default" / "scores.parquet")
    expected = 2.0 * scores["index"].to_numpy() + scores["label"].to_numpy()
    np.testing.assert_allclose(scores["my_metric"].to_numpy(), expected)
    # the plugin is loaded again in the next stage's process: select ranks by it
    out = run_cli("select", *common, "+metric.my_metric.scale=2", "select.fraction=0.25", cwd=tmp_path,
                  pythonpath=tmp_path / "plugs")
    assert out.returncode == 0, out.stderr[-3000:]
    selection = pd.read_parquet(next((work / "synthetic-train" / "default" / "selections").glob("*/selection.parquet")))
    kept = selection.loc[selection["kept"], "index"]
    assert kept.min() >= selection["index"].quantile(0.7)  # keep_hard on index-driven scores keeps the last quarter


def test_plugin_given_as_a_file_path_and_a_missing_plugin(tmp_path):
    path = tmp_path / "file_plugin.py"
    path.write_text(PLUGIN.format(name="file_metric"))
    module = import_plugin(str(path))
    from datacull.metrics.registry import get_metric

    assert get_metric("file_metric").obj is module.planted
    assert import_plugin(str(path)) is module  # imported once
    with pytest.raises(DatacullError, match="cannot import 'no_such_plugin_mod'.*PYTHONPATH"):
        import_plugin("no_such_plugin_mod")
    out = run_cli("score", "data=synthetic", f"paths.work_dir={tmp_path / 'w'}", "plugins=[no_such_plugin_mod]",
                  cwd=tmp_path, pythonpath=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "cannot import 'no_such_plugin_mod'" in out.stderr


def test_entry_point_plugins_are_loaded_by_every_command(tmp_path):
    site = tmp_path / "site"
    (site / "ep_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "ep_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (site / "ep_plugin-0.1.dist-info" / "entry_points.txt").write_text("[datacull.plugins]\nep = ep_plugin_mod\n")
    (site / "ep_plugin_mod.py").write_text(PLUGIN.format(name="entry_point_metric"))
    out = run_cli("metrics", cwd=tmp_path, pythonpath=site)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "entry_point_metric" in [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    out = run_cli("metrics", cwd=tmp_path, pythonpath=tmp_path)  # not installed: not listed
    assert "entry_point_metric" not in out.stdout


ENCODER_PLUGIN = textwrap.dedent('''
    """A planted encoder: the per-channel mean brightness, repeated `dim` times."""
    import torch

    from datacull.encoders.base import Encoder, register_encoder


    @register_encoder("mean_brightness", "planted test encoder")
    class MeanBrightness(Encoder):
        def __init__(self, encoder_cfg, seed):
            self.width = int(encoder_cfg.dim)

        @property
        def dim(self):
            return self.width

        def encode(self, images):
            return images.float().mean(dim=(1, 2, 3))[:, None].repeat(1, self.width) / 255.0
''')


def test_encoder_plugin_with_its_config_option_on_hydras_search_path(tmp_path):
    (tmp_path / "my_conf" / "encoder").mkdir(parents=True)
    (tmp_path / "my_conf" / "encoder" / "mean_brightness.yaml").write_text("name: mean_brightness\ndim: 3\n"
                                                                            "batch_size: 64\nnum_workers: 0\n")
    (tmp_path / "enc_plugin.py").write_text(ENCODER_PLUGIN)
    work = tmp_path / "w"
    out = run_cli("embed", "data=synthetic", "encoder=mean_brightness", "hydra.searchpath=[file://my_conf]",
                  "plugins=[enc_plugin]", f"paths.work_dir={work}", cwd=tmp_path, pythonpath=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    from datacull.config import compose
    from datacull.data.base import build_source

    vectors = np.load(next((work / "synthetic-train" / "embeddings").glob("mean_brightness-*/00000.npy")))
    source = build_source(compose(["data=synthetic"]).data)
    expected = np.array([source.load(i).astype(np.float64).mean() / 255.0 for i in range(len(source))])
    assert vectors.shape == (len(source), 3)
    np.testing.assert_allclose(vectors[:, 1], expected, rtol=1e-5)


def test_readme_plugin_example_runs_as_written(tmp_path):
    """The README's `my_metrics.py` block and its command, with cheap data appended."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(# my_metrics\.py\n.*?)```", readme, re.S).group(1)
    line = next(l for l in readme.splitlines() if l.startswith("PYTHONPATH=. datacull score"))
    (tmp_path / "my_metrics.py").write_text(code)
    argv = shlex.split(line)
    assert argv[:2] == ["PYTHONPATH=.", "datacull"]
    work = tmp_path / "w"
    out = run_cli(*argv[2:], "data=synthetic", "encoder=pixels", "metric.ssp.k=4", f"paths.work_dir={work}",
                  cwd=tmp_path, pythonpath=".")
    assert out.returncode == 0, out.stderr[-3000:]
    scores = pd.read_parquet(work / "synthetic-train" / "default" / "scores.parquet")
    x = np.load(next((work / "synthetic-train" / "embeddings").glob("pixels-*/00000.npy"))).astype(np.float64)
    np.testing.assert_allclose(scores["my_metric"], 2 * np.linalg.norm(x - x.mean(0), axis=1), rtol=1e-4)
    assert scores["ssp"].notna().all()
