"""Locating and composing the Hydra configuration outside of the CLI (tests, notebooks, scripts)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig


def conf_dir() -> Path:
    """The `conf/` folder: shipped inside the wheel as datacull/conf, or at the source tree's top."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    source_tree = Path(__file__).resolve().parent.parent / "conf"
    if source_tree.is_dir():
        return source_tree
    raise FileNotFoundError(f"datacull's conf/ folder is missing (looked in {packaged} and {source_tree})")


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the app config with Hydra overrides, as `datacull STAGE overrides...` would.

    Like the CLI, values holding a webdataset brace pattern need no Hydra quoting
    (`compose(["data=wds", "data.urls=shards/train-{000000..000009}.tar"])`).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from datacull.cli import quote_brace_patterns

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=quote_brace_patterns(list(overrides)))
    finally:
        GlobalHydra.instance().clear()
