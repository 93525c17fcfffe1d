"""Logging: concise console lines, and a log file kept with every experiment.

Console (Hydra's job logging, `conf/hydra/job_logging/datacull.yaml`): datacull's INFO messages as
plain lines on stdout; warnings and errors on stderr as `warning: ...` / `error: ...`; other
libraries only from WARNING up (so faiss's import-time "Could not load library with AVX2 support"
INFO lines never show).

Log file: the CLI runs every stage inside `stage_logging(cfg, stage)`, which adds a file handler for
that one run: `{experiment}/logs/{stage}-{YYYYmmdd-HHMMSS}.log` (`{work_dir}/theory/logs/` for the
theory stage), a new file per run and per multirun job (a clash gets `-1`, `-2`, ...). It holds
everything from DEBUG up: the command, the resolved config, each message with its time and
logger, Python warnings, the error or traceback of a failed run, the faiss build, the duration.

In modules: `log = logging.getLogger(__name__)`, then `log.info(...)` for what a user should see,
`log.debug(...)` for detail that belongs in the file only, `log.warning(...)` for problems.
Progress bars: `progress(iterable, desc=...)` (tqdm, shown only when stderr is a terminal; the CLI
also sets TQDM_DISABLE=1 when it is not, which every plain `tqdm(...)` call honours).
From Python (notebooks, scripts) `configure_console()` shows the INFO messages on stdout.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import shlex
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

FILE_ONLY = {"console": False}  # `log.error(msg, extra=FILE_ONLY)`: recorded in the log file, not shown
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

log = logging.getLogger(__name__)
_current_file: Path | None = None  # the log file of the stage running now (None outside `stage_logging`)


class ConsoleFormatter(logging.Formatter):
    """INFO and below: the bare message; WARNING and up: `warning: message` / `error: message`."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "py.warnings":  # "path:line: Category: text\n  source line" -> "Category: text"
            message = _short_warning(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def _short_warning(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else text
    parts = first.split(": ", 1)
    return parts[1] if len(parts) == 2 and ":" in parts[0] else first


class MaxLevelFilter(logging.Filter):
    """Pass records at or below `level` (e.g. INFO on stdout, the rest goes to stderr)."""

    def __init__(self, level: int | str = logging.INFO):
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else int(level)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno <= self.level


class ConsoleFilter(logging.Filter):
    """Drop records logged with `extra=FILE_ONLY` (they go to the log file only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True) is not False


class StdStreamHandler(logging.StreamHandler):
    """A StreamHandler writing to whatever `sys.stdout` / `sys.stderr` is when each record arrives.

    Notebooks and pytest's capsys replace sys.stdout after logging is set up; this follows them.
    """

    def __init__(self, stream_name: str = "stdout"):
        self.stream_name = stream_name
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the current stream is used instead
        pass


def configure_console(level: int = logging.INFO) -> None:
    """Show datacull's messages (INFO on stdout, warnings on stderr) when calling stages from Python (no Hydra)."""
    logger = logging.getLogger("datacull")
    logger.setLevel(level)
    if any(getattr(h, "_datacull_console", False) for h in logger.handlers):
        return
    for stream_name in ("stdout", "stderr"):
        handler = StdStreamHandler(stream_name)
        handler.setFormatter(ConsoleFormatter())
        handler.addFilter(ConsoleFilter())
        if stream_name == "stdout":
            handler.setLevel(level)
            handler.addFilter(MaxLevelFilter(logging.INFO))
        else:
            handler.setLevel(logging.WARNING)
        handler._datacull_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


# ------------------------------------------------------------------------------------ progress

def show_progress() -> bool:
    """Whether to draw progress bars: stderr is a terminal and TQDM_DISABLE is unset (or empty)."""
    if os.environ.get("TQDM_DISABLE"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable: Any = None, **kwargs: Any):
    """`tqdm(iterable, **kwargs)`, disabled off a terminal (and where the caller passes disable=True)."""
    from tqdm.auto import tqdm

    kwargs["disable"] = bool(kwargs.get("disable")) or not show_progress()
    return tqdm(iterable, **kwargs)


# ------------------------------------------------------------------------------------ log file

def current_log_file() -> Path | None:
    """The log file of the stage run in progress (for summaries), or None."""
    return _current_file


def log_dir(cfg: Any, stage: str) -> Path:
    """Where the log files of `stage` go: the experiment folder's `logs/` (theory: `{work_dir}/theory/logs`)."""
    if stage == "theory":
        return Path(str(cfg.paths.work_dir)) / "theory" / "logs"
    from datacull import layout

    return layout.experiment_dir(cfg) / "logs"


def new_log_file(directory: Path, stage: str, when: datetime | None = None) -> Path:
    """Create and return a new, empty `{stage}-{YYYYmmdd-HHMMSS}[-N].log` in `directory` (never reused)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    for attempt in range(10_000):
        path = directory / (f"{stage}-{stamp}.log" if attempt == 0 else f"{stage}-{stamp}-{attempt}.log")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return path
    raise OSError(f"no free log file name for {stage} in {directory}")


@contextlib.contextmanager
def stage_logging(cfg: Any, stage: str, argv: list[str] | None = None) -> Iterator[Path | None]:
    """Record one stage run in a new log file of its experiment (see module docstring); yields its path.

    The file gets DEBUG and up from every logger, warnings included. An error raised inside is
    recorded (its message, or the traceback of an unexpected exception) and re-raised. When the
    folder cannot be written the run goes on without a file (the stage reports the folder itself).
    """
    from datacull.errors import DatacullError

    global _current_file
    try:
        path: Path | None = new_log_file(log_dir(cfg, stage), stage)
    except (OSError, DatacullError, AttributeError, KeyError) as exc:
        log.debug("no log file for this run: %s", exc)
        path = None
    root, package = logging.getLogger(), logging.getLogger("datacull")
    old_level = package.level
    if package.getEffectiveLevel() > logging.DEBUG:
        package.setLevel(logging.DEBUG)
    handler = None
    if path is not None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(handler)
        if not package.propagate:
            package.addHandler(handler)
    old_showwarning, previous_file, _current_file = warnings.showwarning, _current_file, path
    logging.captureWarnings(True)
    start = time.perf_counter()
    _write_header(cfg, stage, argv)
    try:
        yield path
    except DatacullError as exc:
        log.error("datacull %s failed: %s", stage, exc, extra=FILE_ONLY)
        raise
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        log.error("datacull %s failed with %s", stage, type(exc).__name__, exc_info=True, extra=FILE_ONLY)
        raise
    else:
        log.debug("datacull %s finished in %.1f s", stage, time.perf_counter() - start)
    finally:
        with contextlib.suppress(Exception):
            check_faiss_build(cfg)
        logging.captureWarnings(False)
        warnings.showwarning = old_showwarning
        _current_file = previous_file
        if handler is not None:
            root.removeHandler(handler)
            package.removeHandler(handler)
            handler.close()
        package.setLevel(old_level)


def _write_header(cfg: Any, stage: str, argv: list[str] | None) -> None:
    import datacull

    command = shlex.join(["datacull", stage, *(argv if argv is not None else sys.argv[1:])])
    log.debug("command: %s", command)
    log.debug("cwd %s, datacull %s, python %s, host %s, pid %d", os.getcwd(), datacull.__version__,
              platform.python_version(), platform.node(), os.getpid())
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        job = hydra_cfg.job.get("num") if hydra_cfg.mode is not None and str(hydra_cfg.mode) == "RunMode.MULTIRUN" else None
        log.debug("%soverrides: %s", "" if job is None else f"multirun job {job} ", " ".join(hydra_cfg.overrides.task))
    except Exception:  # not under Hydra (tests, notebooks)
        pass
    try:
        from omegaconf import OmegaConf

        log.debug("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    except Exception as exc:  # an unresolvable interpolation is reported by the stage itself
        log.debug("config could not be resolved: %s", exc)


# ---------------------------------------------------------------------------------------- faiss

def faiss_build() -> dict:
    """Which faiss is importable: version, GPU count, the distributions providing it (faiss-cpu / faiss-gpu*)."""
    from importlib import metadata

    import faiss

    gpus = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    dists = sorted({d for d in metadata.packages_distributions().get("faiss", [])})
    return {"version": getattr(faiss, "__version__", "?"), "gpus": gpus,
            "gpu_build": hasattr(faiss, "StandardGpuResources"), "distributions": dists}


def check_faiss_build(cfg: Any = None) -> dict | None:
    """Log the faiss build a stage used (nothing when it did not import faiss); warn on a CPU build beside a GPU.

    faiss-cpu and faiss-gpu install the same `faiss` module, so the one installed last wins; this
    says which one is loaded and warns when a GPU is visible to torch but faiss cannot use it, or
    when both distributions are installed.
    """
    if "faiss" not in sys.modules:
        return None
    info = faiss_build()
    log.debug("faiss %s (%s, %d GPUs; installed by %s)", info["version"], "GPU build" if info["gpu_build"]
              else "CPU build", info["gpus"], ", ".join(info["distributions"]) or "unknown")
    if len(info["distributions"]) > 1:
        log.warning("both %s are installed and write the same `faiss` module (now the %s build); keep one: "
                    "see README, Install", " and ".join(info["distributions"]),
                    "GPU" if info["gpu_build"] else "CPU")
    torch = sys.modules.get("torch")
    device = str(cfg.get("device", "auto")) if cfg is not None and hasattr(cfg, "get") else "auto"
    if torch is not None and device != "cpu" and info["gpus"] == 0 and torch.cuda.is_available():
        log.warning("a GPU is available but faiss is the CPU build, so k-means ran on the CPU; for GPU k-means "
                    "install the gpu extra in place of faiss-cpu (README, Install)")
    return info
