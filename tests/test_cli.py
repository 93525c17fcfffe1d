"""The `datacull` command: help, metrics list, Hydra flags, errors as one line with exit 2."""
import subprocess
import sys

import pytest

from datacull.metrics.registry import list_metrics


def datacull(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "datacull.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


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
    out = datacull("select", "-m", *common, "select.policy=keep_easy,ccs", "name=default", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("select: kept 128") == 2


@pytest.mark.parametrize("override, choice", [("data=nope", "fashion_mnist"), ("encoder=nope", "pixels")])
def test_unknown_config_group_option_names_the_choices(override, choice, tmp_path):
    out = datacull("embed", override, cwd=tmp_path)
    assert out.returncode != 0
    assert "Available options" in out.stderr and choice in out.stderr
