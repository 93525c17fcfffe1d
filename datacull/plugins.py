"""Plugins: your own metrics, encoders and data sources, usable from the CLI.

A plugin is a Python module whose import registers things with `register_metric`,
`register_encoder` or `register_source`. Two ways to load it before a stage runs:

- `plugins=[mypkg.metrics, ./my_metric.py]` in the config or on the command line: module names
  (importable from sys.path / PYTHONPATH) or paths of `.py` files;
- the entry-point group `datacull.plugins` of an installed package, loaded on every run:
  `[project.entry-points."datacull.plugins"] mypkg = "mypkg.metrics"` (a module, or a callable that
  is then called with no arguments).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Iterable

from datacull.errors import DatacullError

ENTRY_POINT_GROUP = "datacull.plugins"

log = logging.getLogger(__name__)
_loaded: dict[str, object] = {}


def _import_file(path: Path) -> object:
    name = f"datacull_plugin_{path.stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DatacullError(f"plugins: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_plugin(spec: str) -> object:
    """Import one plugin: a module name (`mypkg.metrics`) or the path of a `.py` file; once per process."""
    spec = str(spec).strip()
    if spec in _loaded:
        return _loaded[spec]
    is_file = spec.endswith(".py") or "/" in spec or "\\" in spec
    try:
        if is_file:
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise DatacullError(f"plugins: no file {spec} (resolved to {path})")
            module = _import_file(path)
        else:
            module = importlib.import_module(spec)
    except DatacullError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and spec.split(".")[0] == exc.name.split(".")[0]:
            raise DatacullError(f"plugins: cannot import {spec!r} ({exc}); put its folder on PYTHONPATH, "
                                f"pip install its package, or give the file path (plugins=[./{spec}.py])") from None
        raise DatacullError(f"plugins: importing {spec!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise DatacullError(f"plugins: importing {spec!r} failed: {type(exc).__name__}: {exc}") from None
    _loaded[spec] = module
    log.debug("plugin %s loaded from %s", spec, getattr(module, "__file__", "?"))
    return module


def entry_point_plugins() -> list[metadata.EntryPoint]:
    """The installed entry points of the `datacull.plugins` group."""
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_entry_points() -> list[str]:
    """Load every `datacull.plugins` entry point (call it when it is a callable); returns their names."""
    names = []
    for entry in entry_point_plugins():
        key = f"entry-point:{entry.name}={entry.value}"
        if key not in _loaded:
            try:
                obj = entry.load()
                if callable(obj) and not isinstance(obj, types.ModuleType):
                    obj()
            except Exception as exc:
                raise DatacullError(f"plugins: the {ENTRY_POINT_GROUP} entry point {entry.name!r} = {entry.value!r} "
                                    f"failed: {type(exc).__name__}: {exc}") from None
            _loaded[key] = obj
            log.debug("plugin entry point %s = %s loaded", entry.name, entry.value)
        names.append(entry.name)
    return names


def load_plugins(specs: Iterable[str] | str | None = (), entry_points: bool = True) -> list[str]:
    """Load the entry-point plugins, then `specs` (the config's `plugins` list); returns what was loaded."""
    if specs is None:
        specs = []
    elif isinstance(specs, str):
        specs = [specs]
    loaded = load_entry_points() if entry_points else []
    for spec in specs:
        import_plugin(str(spec))
        loaded.append(str(spec))
    return loaded
