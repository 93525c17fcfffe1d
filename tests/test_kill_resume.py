"""Kill-and-resume suite (issue #12): SIGKILL each stage at seeded kill points, resume, compare.

Kill points come from the hook in datacull/faults.py (``DATACULL_KILL_AT=<label>:<n>``): a launch is
killed the n-th time it passes a point labelled `write` (atomic file write: temporary complete, not
renamed, so litter is left), `commit` (just renamed), `swap` (export folder complete, before the
swap), `step` (after a SimCLR optimizer step) or `any`. A resumed launch skips finished work, so a
chain of killed launches walks through the stage; once a chain has its kills, launches without a
kill resume it to the end. Then its outputs must equal an uninterrupted reference run's: npy, npz,
tar and wids index byte for byte, torch weights / checkpoints tensor for tensor (see _same_tensors),
parquet table for table, training `run.json` and
result rows (`results/rows/*.json`, `results.csv`) value for value except the wall-clock fields in
TIMING_FIELDS (elapsed seconds and finish time differ between any two runs); `run_dir` is compared
relative to the work dir. `datacull verify` must pass (shards, selections, result rows vs results.csv)
and no temporary may remain.

Stages (CHAINS): `run` (embed pixels / score ssp / select / export / report), `embed` with a
SimCLR encoder trained in the launch, `score` of el2n + forgetting (the shared training runs),
`train` on a selection and `sweep` (2 policies x 1 fraction). Default: >= 30 kill points over all
stages; ``-m slow``: >= 100. The kill points exercised (spec, label, file or SimCLR step) go to
``<tmp>/kill_points.txt`` per stage, to ``<basetemp>/kill_points.txt`` for all, and into every
assertion message. One planted case pins the defect the slow suite found (a `train` killed between its
final run.json and the checkpoint cleanup kept checkpoint.pt forever).

Launches are forked from a "zygote" process that has imported torch and datacull but computed
nothing (each launch is still its own process, killed with SIGKILL; the fork only saves the ~3 s
import per launch); the reference runs are ordinary `python -m datacull.cli` processes.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

LITTER = re.compile(r"^\..+\.(tmp|old)$")
TIMING_FIELDS = ("train_seconds", "eval_seconds", "finished_at")  # result rows: wall-clock, differ per run
HISTORY_TIMING = "seconds"  # run.json history entries: epoch wall-clock
BYTES = (".npy", ".npz", ".tar")
TINY_TRAIN = ["model.width=4", "train.batch_size=64"]


@dataclass(frozen=True)
class Chain:
    """One stage under test: `argv` is killed repeatedly; `setup` runs once before, uninterrupted."""
    argv: tuple[str, ...]
    labels: tuple[str, ...] = ("write", "commit", "any")
    # a launch is killed at its n-th point, n in [1, max_count] (sized to the stage, so kills spread over it)
    max_count: int = 4
    steps: int = 0  # SimCLR optimizer steps of one launch (the `step` label's range)
    default_kills: int = 6
    slow_kills: int = 20
    setup: tuple[tuple[str, ...], ...] = ()


_SSP = ("data=synthetic", "encoder=pixels", "metric.ssp.k=4")
CHAINS = {
    "run": Chain(("run", *_SSP), labels=("write", "commit", "swap", "any"), default_kills=7, slow_kills=24),
    "embed_simclr": Chain(("embed", "data=synthetic", "encoder=simclr", "encoder.epochs=2",
                           "encoder.train_samples=128", "encoder.train_batch_size=32", "encoder.width=4",
                           "encoder.dim=16", "encoder.proj_dim=16"),
                          # 4 steps x 2 epochs of SimCLR (drawn twice as often as the 3 file writes)
                          labels=("step", "step", "write", "commit", "any"), max_count=3, steps=8),
    "score_training": Chain(("score", "data=synthetic", "encoder=pixels", "metrics=[el2n,forgetting]",
                             "train.epochs=2", "metric.el2n.epoch=1", *TINY_TRAIN), max_count=14, default_kills=7),
    "train": Chain(("train", *_SSP, "train.epochs=2", *TINY_TRAIN), max_count=8, default_kills=5,
                   setup=(("score", *_SSP),)),
    "sweep": Chain(("sweep", *_SSP, "sweep.policies=[keep_hard,keep_easy]", "sweep.fractions=[0.5]",
                    "sweep.seeds=[0]", "train.epochs=1", *TINY_TRAIN), max_count=10),
}
VERIFIED = ("run", "train", "sweep")  # stages whose outputs `datacull verify` checks
assert sum(c.default_kills for c in CHAINS.values()) >= 30 and sum(c.slow_kills for c in CHAINS.values()) >= 100


def _cli(work: Path, argv: tuple[str, ...] = ("run", *_SSP)) -> subprocess.CompletedProcess:
    """An ordinary `python -m datacull.cli` process (reference runs, tests/test_determinism.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DATACULL_KILL_AT", None)
    return subprocess.run([sys.executable, "-m", "datacull.cli", *argv, f"paths.work_dir={work}", "device=cpu"],
                          capture_output=True, text=True, env=env, timeout=300)


# ------------------------------------------------------------------------------------------ zygote

def _zygote_main() -> None:
    """Import everything, then fork one child per stdin line ``[argv, kill_spec, out_file, kill_log]``;
    answer each with the child's exit code (negative: killed by that signal)."""
    import torch  # noqa: F401  (imported, never used here: forking after computing is unsafe)

    import datacull.cli
    import datacull.faults
    from datacull.stages import embed, export, report, run, score, select, sweep, train, verify  # noqa: F401

    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        argv, kill_at, out_file, kill_log = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ.pop(datacull.faults.ENV, None)
                if kill_at:
                    os.environ[datacull.faults.ENV], os.environ[datacull.faults.LOG_ENV] = kill_at, kill_log
                datacull.faults._seen.clear()
                datacull.cli.main(list(argv))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)  # reaped at once: a dead writer's pid must not look alive
        print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)


class Launcher:
    """Talks to the zygote: `launch` runs one `datacull` command in a fresh forked process."""

    def __init__(self, logs: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("DATACULL_KILL_AT", None)
        self.logs, self.n = logs, 0
        self.proc = subprocess.Popen([sys.executable, __file__, "--zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parents[1])
        assert json.loads(self.proc.stdout.readline()) == "ready"

    def launch(self, argv, kill_at: str | None = None, kill_log: Path | None = None) -> tuple[int, str]:
        """(exit code, output) of `datacull *argv`, killed at `kill_at` (logged to `kill_log`) if given."""
        self.n += 1
        out = self.logs / f"launch{self.n}.log"
        self.proc.stdin.write(json.dumps([list(argv), kill_at, str(out), str(kill_log or "")]) + "\n")
        self.proc.stdin.flush()
        code = json.loads(self.proc.stdout.readline())
        return code, out.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    zygote = Launcher(tmp_path_factory.mktemp("launches"))
    yield zygote
    zygote.close()


# ------------------------------------------------------------------------------------- comparison

def _outputs(work: Path) -> dict[str, Path]:
    """Compared outputs by path relative to `work`."""
    def wanted(p: Path) -> bool:
        return (p.suffix in (*BYTES, ".parquet", ".pt") or p.name.endswith(".wids.json")
                or p.name in ("run.json", "results.csv") or (p.suffix == ".json" and p.parent.name == "rows"))
    return {str(p.relative_to(work)): p for p in sorted(work.rglob("*")) if p.is_file() and wanted(p)
            and not LITTER.match(p.name)}


def _litter(work: Path) -> list[str]:
    return [str(p) for p in work.rglob("*") if LITTER.match(p.name)]


def _normal(obj, work: Path):
    """A run.json / result row without wall-clock fields, with paths relative to `work`."""
    if isinstance(obj, dict):
        return {k: _normal(v, work) for k, v in obj.items() if k not in TIMING_FIELDS and k != HISTORY_TIMING}
    if isinstance(obj, list):
        return [_normal(v, work) for v in obj]
    return obj.replace(str(work), "<work>") if isinstance(obj, str) else obj


def _results_table(path: Path, work: Path) -> pd.DataFrame:
    table = pd.read_csv(path).drop(columns=list(TIMING_FIELDS))
    table["run_dir"] = table["run_dir"].str.replace(str(work), "<work>", regex=False)
    return table.sort_values("run_id").reset_index(drop=True)


def _load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _same_tensors(a, b) -> bool:
    """Exact equality of two torch.load results (nested dicts / lists of tensors and plain values).

    Weights are compared by value, not bytes: torch.save names the zip archive's root folder after
    the file, which is the atomic write's temporary (its name holds a pid and a random part)."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same(ref: Path, got: Path, report: str) -> None:
    a, b = _outputs(ref), _outputs(got)
    assert sorted(a) == sorted(b), f"outputs differ: {sorted(set(a) ^ set(b))}\n{report}"
    for name, path in a.items():
        if path.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(b[name]), obj=f"{name}\n{report}")
        elif path.name == "results.csv":
            pd.testing.assert_frame_equal(_results_table(path, ref), _results_table(b[name], got),
                                          obj=f"{name}\n{report}")
        elif path.suffix == ".pt":
            assert _same_tensors(_load(path), _load(b[name])), f"{name} differs\n{report}"
        elif path.suffix == ".json" and not path.name.endswith(".wids.json"):
            assert (_normal(json.loads(path.read_text()), ref) == _normal(json.loads(b[name].read_text()), got)), \
                f"{name} differs\n{report}"
        else:
            assert path.read_bytes() == b[name].read_bytes(), f"{name} differs\n{report}"


# ---------------------------------------------------------------------------------------- suite

_REFERENCES: dict[str, Path] = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """`reference(stage)`: the work dir of one uninterrupted run of the stage (made once per module)."""
    def get(stage: str) -> Path:
        if stage not in _REFERENCES:
            work = tmp_path_factory.mktemp(f"ref-{stage}") / "work"
            for argv in (*CHAINS[stage].setup, CHAINS[stage].argv):
                proc = _cli(work, argv)
                assert proc.returncode == 0, proc.stderr[-2000:]
            _REFERENCES[stage] = work
        return _REFERENCES[stage]
    return get


def _chain(launcher: Launcher, chain: Chain, argv: list[str], rng: random.Random, kills_wanted: int,
           kill_log: Path, log: list[str], max_launches: int = 80) -> int:
    """Kill launches of `argv` at seeded points until `kills_wanted` kills, then resume until one finishes;
    return the number of kills."""
    kills = 0
    for _ in range(max_launches):
        spec = None
        if kills < kills_wanted:
            label = rng.choice(chain.labels)
            spec = f"{label}:{rng.randint(1, {'swap': 1, 'step': chain.steps}.get(label, chain.max_count))}"
        before = kill_log.read_text().splitlines() if kill_log.exists() else []
        code, out = launcher.launch(argv, spec, kill_log)
        if code == -signal.SIGKILL:
            kills += 1
            fired = kill_log.read_text().splitlines()
            assert len(fired) == len(before) + 1, f"{spec}: killed, but not by the hook\n{out[-3000:]}"
            log.append(f"  killed at {fired[-1]}")
            continue
        assert code == 0, f"{spec}: exit {code}\n{out[-3000:]}\n" + "\n".join(log)
        if spec is None:
            log.append("  resumed to the end")
            return kills
        log.append(f"  {spec} not reached, finished")
        return kills
    raise AssertionError(f"no launch finished after {max_launches}")


def _suite(stage: str, launcher: Launcher, reference, tmp_path: Path, seed: int, min_kills: int,
           summary: Path) -> None:
    chain = CHAINS[stage]
    ref = reference(stage)
    rng, log, kills, n = random.Random(f"{seed}-{stage}"), [], 0, 0
    kill_log = tmp_path / "fired.txt"
    while kills < min_kills:
        work = tmp_path / f"chain{n}" / "work"
        argv = [*chain.argv, f"paths.work_dir={work}", "device=cpu"]
        for setup in chain.setup:
            code, out = launcher.launch([*setup, f"paths.work_dir={work}", "device=cpu"])
            assert code == 0, out[-3000:]
        log.append(f"{stage} chain{n}:")
        kills += _chain(launcher, chain, argv, rng, min_kills - kills, kill_log, log)
        report = f"{stage}: seed {seed}, {kills} kill points:\n" + "\n".join(log)
        (tmp_path / "kill_points.txt").write_text(report + "\n")
        assert not _litter(work), f"litter {_litter(work)}\n{report}"
        _assert_same(ref, work, report)
        checked = sorted({p.parent for p in [*work.glob("*/*/selections"), *work.glob("*/*/results")]})
        assert bool(checked) == (stage in VERIFIED), f"verify targets {checked}\n{report}"
        for run_dir in checked:  # selections, shards and result rows (embeddings / scores alone: nothing to verify)
            code, out = launcher.launch(["verify", str(run_dir)])
            assert code == 0 and "verify: OK" in out, out[-3000:] + report
        n += 1
    with open(summary, "a") as handle:
        handle.write(report + "\n")
    print(f"kill-and-resume {stage}: {kills} kill points in {n} chains (seed {seed}); "
          f"see {tmp_path / 'kill_points.txt'}")


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "kill_points.txt"


@pytest.mark.parametrize("stage", list(CHAINS))
def test_kill_and_resume(stage, launcher, reference, tmp_path, summary):
    _suite(stage, launcher, reference, tmp_path, seed=12, min_kills=CHAINS[stage].default_kills, summary=summary)


def test_train_killed_between_final_run_json_and_cleanup_resumes_clean(launcher, reference, tmp_path):
    """Planted state of a kill just after the finished run.json was committed: checkpoint.pt still there,
    no result row yet. The resumed `train` must drop the checkpoint and match the reference (found by the
    slow suite: the finished-run path returned before the cleanup, so checkpoint.pt stayed forever)."""
    chain, work = CHAINS["train"], tmp_path / "work"
    for argv in (*chain.setup, chain.argv):
        code, out = launcher.launch([*argv, f"paths.work_dir={work}", "device=cpu"])
        assert code == 0, out[-3000:]
    (run_dir,) = work.glob("*/runs/*/kept-*")
    (row,) = work.glob("*/*/results/rows/*.json")
    shutil.copy(run_dir / "weights-epoch0002.pt", run_dir / "checkpoint.pt")
    row.unlink()
    code, out = launcher.launch([*chain.argv, f"paths.work_dir={work}", "device=cpu"])
    assert code == 0, out[-3000:]
    assert row.exists() and not (run_dir / "checkpoint.pt").exists()
    _assert_same(reference("train"), work, "train resumed after its final run.json")


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(CHAINS))
def test_kill_and_resume_slow(stage, launcher, reference, tmp_path, summary):
    _suite(stage, launcher, reference, tmp_path, seed=1212, min_kills=CHAINS[stage].slow_kills, summary=summary)


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote_main()
