"""Logging: one new log file per stage run in the experiment folder, concise console lines, quiet faiss."""
import logging
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from datacull import logs
from datacull.config import conf_dir
from datacull.errors import DatacullError


def test_new_log_file_never_reuses_a_name(tmp_path):
    when = datetime(2024, 5, 6, 7, 8, 9)
    names = [logs.new_log_file(tmp_path / "logs", "embed", when).name for _ in range(3)]
    assert names == ["embed-20240506-070809.log", "embed-20240506-070809-1.log", "embed-20240506-070809-2.log"]


def test_stage_logging_records_messages_warnings_and_the_error(make_cfg):
    cfg = make_cfg("name=logged")
    probe = logging.getLogger("datacull.stages.probe")
    root_handlers = list(logging.getLogger().handlers)
    with pytest.raises(DatacullError):
        with logs.stage_logging(cfg, "score", ["data=synthetic"]) as path:
            probe.info("visible %d", 42)
            probe.debug("file only detail")
            warnings.warn("a planted warning", UserWarning)
            raise DatacullError("planted failure")
    assert path.parent == logs.log_dir(cfg, "score") and path.parent.parent.name == "logged"
    text = path.read_text()
    for expected in ("command: datacull score data=synthetic", "config:", "name: logged", "visible 42",
                     "file only detail", "UserWarning: a planted warning", "ERROR", "planted failure"):
        assert expected in text, expected
    assert logging.getLogger().handlers == root_handlers  # the file handler is removed again
    probe.info("after the run")
    assert "after the run" not in path.read_text()


def test_unexpected_exception_leaves_its_traceback_in_the_file_and_theory_logs_beside_its_outputs(make_cfg):
    cfg = make_cfg()
    with pytest.raises(ZeroDivisionError):
        with logs.stage_logging(cfg, "theory") as path:
            1 / 0
    assert path.parent == Path(cfg.paths.work_dir) / "theory" / "logs"
    text = path.read_text()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError" in text


def test_console_formatter_is_concise():
    formatter = logs.ConsoleFormatter()
    info = logging.LogRecord("datacull.x", logging.INFO, __file__, 1, "embed: wrote %d", (3,), None)
    warn = logging.LogRecord("datacull.x", logging.WARNING, __file__, 1, "odd data", (), None)
    pywarn = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1,
                               "/a/b.py:12: UserWarning: careful\n  warnings.warn('careful')\n", (), None)
    assert formatter.format(info) == "embed: wrote 3"
    assert formatter.format(warn) == "warning: odd data"
    assert formatter.format(pywarn) == "warning: UserWarning: careful"


def test_job_logging_config_hides_the_faiss_loader_lines_and_splits_stdout_stderr():
    """Apply conf/hydra/job_logging/datacull.yaml as Hydra does, then import faiss in a fresh process."""
    path = conf_dir() / "hydra" / "job_logging" / "datacull.yaml"
    assert OmegaConf.load(path).root.level == "WARNING"
    code = (f"import logging, logging.config; from omegaconf import OmegaConf; "
            f"logging.config.dictConfig(OmegaConf.to_container(OmegaConf.load({str(path)!r}))); "
            "import faiss; log = logging.getLogger('datacull.t'); log.info('hello'); log.debug('hidden'); "
            "log.warning('careful'); logging.getLogger('faiss.loader').info('Loading faiss with AVX2 support.')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello\n" and out.stderr == "warning: careful\n"


def test_progress_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert logs.progress(range(3)).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = logs.progress(range(3))
    assert not bar.disable
    bar.close()
    assert logs.progress(range(3), disable=True).disable  # a caller's own reason still wins
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert logs.progress(range(3)).disable


def test_configure_console_prints_to_the_current_stdout(capsys):
    logger = logging.getLogger("datacull")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    try:
        logs.configure_console()
        logs.configure_console()  # idempotent
        logging.getLogger("datacull.stages.x").info("shown once")
        logging.getLogger("datacull.stages.x").debug("not shown")
        logging.getLogger("datacull.stages.x").warning("careful")
        out = capsys.readouterr()
        assert out.out == "shown once\n" and out.err == "warning: careful\n"
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def test_faiss_build_is_reported_and_a_cpu_build_beside_a_gpu_warns(monkeypatch, caplog):
    import types

    import faiss

    caplog.set_level(logging.DEBUG, logger="datacull")
    info = logs.check_faiss_build(OmegaConf.create({"device": "auto"}))
    assert info["gpus"] == faiss.get_num_gpus() and info["distributions"]
    assert f"faiss {faiss.__version__}" in caplog.text
    if info["gpus"] == 0:  # this machine's faiss is the CPU build: pretend torch sees a GPU
        fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True))
        monkeypatch.setitem(sys.modules, "torch", fake_torch)
        caplog.clear()
        logs.check_faiss_build(OmegaConf.create({"device": "auto"}))
        assert "faiss is the CPU build" in caplog.text
        caplog.clear()
        logs.check_faiss_build(OmegaConf.create({"device": "cpu"}))  # asked for the CPU: nothing to say
        assert "a GPU is available" not in caplog.text
