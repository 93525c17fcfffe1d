"""Deterministic kill points for the kill-and-resume tests (tests/test_kill_resume.py).

Set ``DATACULL_KILL_AT=<label>:<n>`` and the process SIGKILLs itself the n-th time (1-based) it
passes ``kill_point(label)``. Labels used by datacull/store.py: ``write`` (an atomic file write whose
temporary is complete but not yet renamed, so the kill leaves litter), ``commit`` (just after a file
rename), ``swap`` (an atomic folder complete, before the swap) and ``any`` (every one of those).
When the variable is unset the hook costs one dict lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "DATACULL_KILL_AT"
_seen: Counter = Counter()


def kill_point(label: str) -> None:
    """SIGKILL this process when ``DATACULL_KILL_AT`` names `label` (or ``any``) and its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, count = spec.rpartition(":")
    if want not in (label, "any"):
        return
    _seen[want] += 1
    if _seen[want] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
