"""`datacull STAGE [hydra overrides]`: the command-line entry point.

The first argument picks the stage; everything after it goes to Hydra, so Hydra's own flags work
(`--cfg job`, `-m` for multirun, `--help`). `datacull metrics` lists the registered metrics.
"""
from __future__ import annotations

import sys

from datacull.errors import DatacullError
from datacull.stages import STAGES, get_stage

USAGE = "usage: datacull STAGE [key=value ...] [hydra flags]\n       datacull metrics"


def _print_help() -> None:
    print(USAGE)
    print("\nstages:")
    for name, (_, _, summary) in STAGES.items():
        print(f"  {name:<8} {summary}")
    print(f"  {'metrics':<8} list the registered pruning metrics")
    print("\nexamples:\n  datacull run\n  datacull score metrics=[ssp,supervised_prototypes] metric.ssp.k=20"
          "\n  datacull select select.policy=ccs select.fraction=0.3\n  datacull embed --cfg job"
          "\n  datacull embed -m shard.index='range(0,4)' shard.count=4")


def _print_metrics() -> None:
    from datacull.metrics.registry import list_metrics

    entries = list_metrics()
    width = max(len(e.name) for e in entries)
    for entry in entries:
        labels = "labels" if entry.info["requires_labels"] else "no labels"
        print(f"{entry.name:<{width}}  [{entry.info['needs']}, {labels}]  {entry.summary}  ({entry.info['citation']})")


def _run_stage(stage: str, argv: list[str]) -> None:
    import hydra

    from datacull.config import conf_dir

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def _app(cfg) -> None:
        try:
            get_stage(stage)(cfg)
        except DatacullError as exc:
            print(f"datacull {stage}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [f"datacull {stage}", *argv]
    _app()


def main(argv: list[str] | None = None) -> None:
    """Dispatch `datacull STAGE ...` (see module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return
    stage, rest = argv[0], argv[1:]
    if stage == "metrics":
        _print_metrics()
        return
    if stage not in STAGES:
        print(f"datacull: error: unknown stage {stage!r}; valid stages: {', '.join(STAGES)}, metrics",
              file=sys.stderr)
        sys.exit(2)
    _run_stage(stage, rest)


if __name__ == "__main__":
    main()
