"""`datacull STAGE [hydra overrides]`: the command-line entry point.

The first argument picks the stage; everything after it goes to Hydra, so Hydra's own flags work
(`--cfg job`, `-m` for multirun, `--help`). `datacull metrics` lists the registered metrics.

Before Hydra sees the overrides, values holding a webdataset brace pattern (`{000000..000099}`,
`{a,b}`) are quoted for Hydra's grammar, so `data.urls=shards/train-{000000..000099}.tar` works as a
shell passes it. Errors a user can fix (bad input, an unknown config option or key, an override
Hydra cannot parse) are one line on stderr and exit status 2; each stage run is logged to a file
in its experiment folder (see `datacull.logs`), after the plugins of `plugins=[...]` and of the
`datacull.plugins` entry points are imported (see `datacull.plugins`).
"""
from __future__ import annotations

import difflib
import errno
import os
import re
import sys

from datacull.errors import DatacullError
from datacull.stages import STAGES, get_stage

USAGE = ("usage: datacull STAGE [key=value ...] [hydra flags]\n       datacull metrics [plugins=[...]]\n"
         "       datacull verify [PATH ...]")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # a full or read-only disk: the user's to fix

# a brace-expansion pattern as webdataset (braceexpand) reads it: {000..999} or {a,b}; never Hydra
# syntax (Hydra dicts have `key: value`, interpolations start with `$`)
_BRACE = re.compile(r"(?<!\$)\{[^{}:$'\"]*(?:\.\.|,)[^{}:$'\"]*\}")


def _print_help() -> None:
    print(USAGE)
    print("\nstages:")
    for name, (_, _, summary) in STAGES.items():
        print(f"  {name:<8} {summary}")
    print(f"  {'metrics':<8} list the registered pruning metrics")
    print("\nexamples:\n  datacull run\n  datacull score metrics=[ssp,supervised_prototypes] metric.ssp.k=20"
          "\n  datacull select select.policy=ccs select.fraction=0.3\n  datacull embed --cfg job"
          "\n  datacull embed -m shard.index='range(0,4)' shard.count=4"
          "\n  datacull run data=wds data.urls='shards/train-{000000..000099}.tar'"
          "\n  datacull score metrics=[my_metric] plugins=[mypkg.metrics]")


def _print_metrics(overrides: list[str]) -> None:
    from datacull.metrics.registry import list_metrics
    from datacull.plugins import load_plugins

    plugins = []
    if overrides:
        from datacull.config import compose

        plugins = list(compose(quote_brace_patterns(overrides)).get("plugins") or [])
    load_plugins(plugins)
    entries = list_metrics()
    width = max(len(e.name) for e in entries)
    for entry in entries:
        labels = "labels" if entry.info["requires_labels"] else "no labels"
        print(f"{entry.name:<{width}}  [{entry.info['needs']}, {labels}]  {entry.summary}  ({entry.info['citation']})")


# --------------------------------------------------------------------------------- brace patterns

def _split_top_level(value: str) -> list[str]:
    """Split `value` into pieces and the separators `[`, `]`, `,` that lie outside braces and quotes."""
    pieces, current, depth, quote = [], "", 0, ""
    for char in value:
        if quote:
            current += char
            quote = "" if char == quote else quote
        elif char in "'\"":
            current += char
            quote = char
        elif char == "{":
            depth += 1
            current += char
        elif char == "}":
            depth = max(depth - 1, 0)
            current += char
        elif depth == 0 and char in "[],":
            pieces += [current, char]
            current = ""
        else:
            current += char
    pieces.append(current)
    return pieces


def _quote(piece: str) -> str:
    """`piece` as a quoted Hydra string when it holds a brace pattern (and is not quoted already)."""
    stripped = piece.strip()
    if not _BRACE.search(stripped) or stripped[:1] in "'\"":
        return piece
    if "'" not in stripped:
        return f"'{stripped}'"
    if '"' not in stripped:
        return f'"{stripped}"'
    return piece


def quote_brace_patterns(argv: list[str]) -> list[str]:
    """Quote brace-pattern values of `key=value` overrides for Hydra's grammar; leave everything else alone.

    `data.urls=shards/train-{000000..000099}.tar` -> `data.urls='shards/train-{000000..000099}.tar'`;
    list elements and comma-separated sweep values are quoted one by one.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and _BRACE.search(value) and re.fullmatch(r"[+~]{0,2}[\w.@/\-]+", key):
            value = "".join(p if p in ("[", "]", ",") else _quote(p) for p in _split_top_level(value))
            arg = f"{key}={value}"
        out.append(arg)
    return out


# ----------------------------------------------------------------------------------- config errors

def _one_line(text) -> str:
    """A (Hydra / OmegaConf) multi-line message as one line, without search paths and trace hints."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(text, OmegaConfBaseException):  # "message\n    full_key: a.b\n    object_type=..."
        first = str(text).strip().splitlines()[0] if str(text).strip() else type(text).__name__
        key = getattr(text, "full_key", None)
        return f"{first} ({key})" if key else first
    lines = []
    for line in str(text).splitlines():
        if line.startswith(("Config search path", "Search path", "Set the environment variable", "See https://")):
            break
        if line.strip():
            lines.append(line.strip())
    return "; ".join(lines).replace("\\'", "'")


def _close(word: str, options, n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, [str(o) for o in options], n=n, cutoff=0.6)


def _registered_metrics() -> list[str]:
    try:
        from datacull.metrics.registry import list_metrics

        return [entry.name for entry in list_metrics()]
    except Exception:  # only for a hint: never mask the real error
        return []


def _config_groups() -> list[str]:
    from datacull.config import conf_dir

    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")


# Hydra launcher options provided by plugin packages (conf/hydra/launcher/slurm.yaml builds on submitit_slurm)
LAUNCHER_PACKAGES = {"joblib": "hydra-joblib-launcher", "submitit_slurm": "hydra-submitit-launcher",
                     "submitit_local": "hydra-submitit-launcher", "slurm": "hydra-submitit-launcher"}


def _unknown_option(group: str, option: str, options) -> str:
    if options is None:  # the group itself does not exist (e.g. `+datasets=x`)
        groups = _config_groups()
        hint = _close(group, groups)
        return (f"there is no config group {group!r}" + (f"; did you mean {hint[0]}={option}?" if hint else "")
                + f" (groups: {', '.join(groups)})")
    if group == "hydra/launcher" and option in LAUNCHER_PACKAGES:  # a launcher plugin that is not installed
        return (f"the Hydra launcher {option!r} is not installed: pip install {LAUNCHER_PACKAGES[option]} "
                f"(installed launchers: {', '.join(options)})")
    message = f"unknown {group} option {option!r}; valid {group} options: {', '.join(options)}"
    if group == "metric" and option in _registered_metrics():
        return (f"{message}; did you mean metrics=[{option}]? (`metric` holds the metrics' settings, "
                "`metrics=[...]` lists the metrics to compute)")
    hint = _close(option, options)
    return message + (f"; did you mean {group}={hint[0]}?" if hint else "")


def _known_keys(parent: str, argv: list[str]) -> list[str]:
    """Keys of the config node `parent` ('' = top level) under the group choices given in `argv`."""
    from omegaconf import DictConfig

    from datacull.config import compose

    choices = [a for a in argv if re.fullmatch(r"[\w/]+=[\w.\-]+", a) and a.split("=")[0] in _config_groups()]
    try:
        cfg = compose(choices)
    except Exception:
        cfg = compose([])
    node = cfg
    for part in [p for p in parent.split(".") if p]:
        node = node.get(part) if isinstance(node, DictConfig) else None
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def _options_with_key(group: str, leaf: str) -> list[str]:
    """Options of config group `group` whose file has the top-level key `leaf` (e.g. data.urls -> wds)."""
    from omegaconf import OmegaConf

    from datacull.config import conf_dir

    found = []
    for path in sorted((conf_dir() / group).glob("*.yaml")) if (conf_dir() / group).is_dir() else []:
        try:
            if leaf in (OmegaConf.load(path) or {}):
                found.append(path.stem)
        except Exception:
            continue
    return found


def _unknown_key(key: str, stage: str, argv: list[str]) -> str:
    parent, _, leaf = key.rpartition(".")
    owners = _options_with_key(parent, leaf) if parent and "." not in parent else []
    if owners:
        return (f"config key {key!r} belongs to {' / '.join(f'{parent}={o}' for o in owners)}, not to the chosen "
                f"{parent} option; add {parent}={owners[0]} (or pick another {parent} option that has it)")
    try:
        keys = _known_keys(parent, argv)
    except Exception:
        keys = []
    candidates = [f"{parent}.{k}" if parent else k for k in keys]
    if not parent:
        candidates += _config_groups()
    hint = _close(leaf if parent else key, keys + ([] if parent else _config_groups()))
    message = f"unknown config key {key!r}"
    if hint:
        message += f"; did you mean {f'{parent}.{hint[0]}' if parent else hint[0]}?"
    elif keys and len(keys) <= 30:
        message += f"; keys of {parent or 'the config'}: {', '.join(sorted(set(candidates)))}"
    return message + f" (`datacull {stage} --cfg job` prints the config; `+{key}=VALUE` adds a new key)"


def config_error_message(exc: BaseException, stage: str, argv: list[str]) -> str | None:
    """One line for a config error Hydra or OmegaConf raised before the stage ran, else None (a bug)."""
    from hydra.errors import (ConfigCompositionException, HydraException, InstantiationException,
                              MissingConfigException, OverrideParseException)
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, MissingConfigException):
        group, _, option = (exc.missing_cfg_file or "").rpartition("/")
        if group:
            return _unknown_option(group, option, exc.options)
        return _one_line(exc)
    if isinstance(exc, OverrideParseException):
        return (f"cannot parse the override {exc.override!r}: {_one_line(exc.message)}; quote a value that holds "
                "special characters ([ ] { } ( ) , = ' \" or spaces) inside the override, e.g. \"key='value'\" "
                "(https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(exc, ConfigCompositionException):
        match = re.match(r"Could not override '([^']+)'", str(exc))
        if match and isinstance(exc.__cause__, (ConfigAttributeError, ConfigKeyError)):
            return _unknown_key(match.group(1), stage, argv)
        cause = f" ({_one_line(exc.__cause__)})" if isinstance(exc.__cause__, OmegaConfBaseException) else ""
        return _one_line(exc) + cause
    if isinstance(exc, HydraException) and not isinstance(exc, InstantiationException):
        return _one_line(exc)
    return None  # anything else came from the stage itself: a bug, shown with its traceback


# ----------------------------------------------------------------------------------------- stages

def _run_stage(stage: str, argv: list[str]) -> None:
    import hydra

    from datacull.config import conf_dir

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def _app(cfg) -> None:
        from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

        from datacull.logs import stage_logging
        from datacull.plugins import load_plugins

        try:
            with stage_logging(cfg, stage, argv):
                load_plugins(cfg.get("plugins") or [])
                get_stage(stage)(cfg)
        except DatacullError as exc:
            print(f"datacull {stage}: error: {_one_line(exc)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except (InterpolationResolutionError, MissingMandatoryValue) as exc:  # e.g. `key=${nope}`
            print(f"datacull {stage}: error: config: {_one_line(exc)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            print(f"datacull {stage}: error: {exc.strerror or exc} writing {exc.filename or 'an output'}; nothing "
                  "half-written was kept: free space (or set paths.work_dir to a writable disk) and run the same "
                  "command again", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            print(f"datacull {stage}: interrupted; everything finished so far is kept (outputs are written "
                  "atomically): run the same command again to resume", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    user_full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    saved = {name: os.environ.get(name) for name in ("HYDRA_FULL_ERROR", "TQDM_DISABLE")}
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let config errors reach us instead of Hydra's multi-line report
    if "TQDM_DISABLE" not in os.environ and not _stderr_is_terminal():
        os.environ["TQDM_DISABLE"] = "1"  # progress bars on a terminal only (tqdm reads this)
    sys.argv = [f"datacull {stage}", *argv]
    try:
        _app()
    except Exception as exc:
        message = None if user_full_error else config_error_message(exc, stage, argv)
        if message is None:
            raise
        print(f"datacull {stage}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _verify(argv: list[str]) -> None:
    """`datacull verify [PATH ...] [overrides]`: read-only, so it runs without Hydra's job machinery.

    Without a PATH it verifies `paths.work_dir` of the config the overrides compose.
    """
    from datacull.stages.verify import verify_paths

    paths = [a for a in argv if "=" not in a and not a.startswith("-")]
    try:
        if not paths:
            from datacull.config import compose

            paths = [str(compose(quote_brace_patterns([a for a in argv if "=" in a])).paths.work_dir)]
        report = verify_paths(paths)
    except DatacullError as exc:
        print(f"datacull verify: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Exception as exc:
        message = config_error_message(exc, "verify", argv)
        if message is None:
            raise
        print(f"datacull verify: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if report.ok:
        print(report.summary(paths))
        return
    print(report.summary(paths) + ":", file=sys.stderr)
    for problem in report.problems:
        print(f"  - {problem}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: list[str] | None = None) -> None:
    """Dispatch `datacull STAGE ...` (see module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return
    stage, rest = argv[0], argv[1:]
    if stage == "metrics":
        try:
            _print_metrics(rest)
        except Exception as exc:
            message = _one_line(exc) if isinstance(exc, DatacullError) else config_error_message(exc, stage, rest)
            if message is None:
                raise
            print(f"datacull metrics: error: {message}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        return
    if stage == "verify":
        _verify(rest)
        return
    if stage not in STAGES:
        hint = _close(stage, [*STAGES, "metrics"], n=1)
        print(f"datacull: error: unknown stage {stage!r}" + (f" (did you mean {hint[0]}?)" if hint else "")
              + f"; valid stages: {', '.join(STAGES)}, metrics", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    _run_stage(stage, quote_brace_patterns(rest))


if __name__ == "__main__":
    main()
