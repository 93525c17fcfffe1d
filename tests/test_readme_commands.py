"""Every `datacull ...` line in README.md's shell blocks is run exactly as printed (split as a POSIX
shell would), in a fresh folder. Cheap lines (digits / synthetic data, help, config printing) run in
the default suite; lines that train on real data run under `-m slow`; lines that need data or
network this machine cannot have must stop with one clear error (exit 2) or are listed with the
reason they cannot run here. A README line that fits none of these fails the test: new commands
must be covered. A fenced block whose first line is the comment `# in order: ...` is one sequence:
its cheap lines run one after the other in one folder (each needs the outputs of the one before)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# lines that need something this machine cannot provide (network downloads, SLURM), with the reason
NOT_RUNNABLE = {
    "datacull embed data=cifar10 data.root=~/data data.download=true": "downloads CIFAR-10 (no network here)",
}
NOT_RUNNABLE_MARKERS = {"hydra/launcher=slurm": "submits to a SLURM cluster (the launcher config is composed in test_sweep)"}
# lines that must fail cleanly because the data they name does not exist on this machine
EXPECT_DATA_ERROR = ("data.root=/datasets/", "data=imagenet", "data.urls='shards/", "report.results=[docs/",
                     "datacull verify ")  # verify in a fresh folder: nothing there yet
CHEAP = ("data=digits", "data=synthetic", "--help", "--cfg", "datacull metrics")


SEQUENCE_MARKER = "# in order:"


def readme_blocks() -> list[tuple[bool, list[str]]]:
    """(is a sequence, `datacull` command lines) of each of README.md's fenced shell blocks, comments stripped."""
    blocks, fence, first = [], None, False
    for raw in README.read_text().splitlines():
        line = raw.strip()
        if line.startswith("```"):
            fence = None if fence is not None else (line[3:].strip() or "plain")
            if fence is not None:
                blocks.append((False, []))
                first = True
            continue
        if fence is None:
            continue
        if first and line.startswith(SEQUENCE_MARKER):
            blocks[-1] = (True, blocks[-1][1])
        first = False
        if fence in ("bash", "sh", "console", "plain") and line.startswith("datacull ") and "STAGE [" not in line:
            blocks[-1][1].append(re.split(r"\s+#\s", line)[0].strip())
    return [block for block in blocks if block[1]]


def readme_commands() -> list[str]:
    """The `datacull` command lines of README.md's fenced shell blocks, except the sequences' cheap lines."""
    return [line for sequence, lines in readme_blocks() for line in lines if not (sequence and kind(line) == "cheap")]


def readme_sequences() -> list[list[str]]:
    """The cheap lines of each `# in order:` block, in order."""
    return [[line for line in lines if kind(line) == "cheap"] for sequence, lines in readme_blocks() if sequence]


def kind(line: str) -> str:
    if line in NOT_RUNNABLE or any(marker in line for marker in NOT_RUNNABLE_MARKERS):
        return "not-runnable"
    if any(marker in line for marker in EXPECT_DATA_ERROR):
        return "data-error"
    if any(marker in line for marker in CHEAP):
        return "cheap"
    return "slow"


def run(line: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    argv = shlex.split(line)
    return subprocess.run([sys.executable, "-m", "datacull.cli", *argv[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


COMMANDS = readme_commands()


def test_readme_has_commands_and_every_one_is_classified():
    assert len(COMMANDS) >= 10
    assert all(kind(line) in ("not-runnable", "data-error", "cheap", "slow") for line in COMMANDS)


@pytest.mark.parametrize("line", [c for c in COMMANDS if kind(c) == "cheap"])
def test_cheap_readme_command_runs_as_printed(line, tmp_path):
    out = run(line, tmp_path, 600)
    assert out.returncode == 0, f"{line}\n{out.stderr[-2000:]}"


@pytest.mark.parametrize("lines", readme_sequences(), ids=lambda lines: lines[0][:60])
def test_readme_sequence_runs_in_order_in_one_folder(lines, tmp_path):
    for line in lines:
        out = run(line, tmp_path, 600)
        assert out.returncode == 0, f"{line}\n{out.stderr[-2000:]}"


@pytest.mark.parametrize("line", [c for c in COMMANDS if kind(c) == "data-error"])
def test_readme_command_without_its_data_fails_with_one_clear_line(line, tmp_path):
    out = run(line, tmp_path, 300)
    assert out.returncode == 2, f"{line}\n{out.stderr[-2000:]}"
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("line", [c for c in COMMANDS if kind(c) == "slow"])
def test_expensive_readme_command_runs_as_printed(line, tmp_path):
    out = run(line, tmp_path, 3600)
    assert out.returncode == 0, f"{line}\n{out.stderr[-2000:]}"
