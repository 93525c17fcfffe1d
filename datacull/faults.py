"""Deterministic kill points for the kill-and-resume tests (tests/test_kill_resume.py).

Set ``DATACULL_KILL_AT=<label>:<n>`` and the process SIGKILLs itself the n-th time (1-based) it
passes ``kill_point(label)``. Labels: ``write`` (datacull/store.py: an atomic file write whose
temporary is complete but not yet renamed, so the kill leaves litter), ``commit`` (store.py: just
after a file rename), ``swap`` (store.py: an atomic folder complete, before the swap), ``step``
(datacull/encoders/simclr.py: after an optimizer step of SimCLR training, which is not
checkpointed, so a resumed embed retrains from the start) and ``any`` (every one of those).
With ``DATACULL_KILL_LOG=<file>`` the point that fires appends one line (spec, label, where) to
that file first, so a test can record what was interrupted. When ``DATACULL_KILL_AT`` is unset the
hook costs one dict lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "DATACULL_KILL_AT"
LOG_ENV = "DATACULL_KILL_LOG"
_seen: Counter = Counter()


def kill_point(label: str, where: object = "") -> None:
    """SIGKILL this process when ``DATACULL_KILL_AT`` names `label` (or ``any``) and its count is reached.

    `where` (a path or a short description) is only written to ``DATACULL_KILL_LOG`` when the point fires.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, count = spec.rpartition(":")
    if want not in (label, "any"):
        return
    _seen[want] += 1
    if _seen[want] == int(count):
        log_path = os.environ.get(LOG_ENV)
        if log_path:
            with open(log_path, "a") as handle:
                handle.write(f"{spec} {label} {where}\n")
                handle.flush()
                os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
