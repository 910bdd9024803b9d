"""Sample a running Python process with py-spy and say where its CPU time goes (self time per frame).

py-spy (pinned in requirements-dev.txt) reads the process's memory from outside, so the proxy runs
unchanged; it needs ptrace rights (root, or CAP_SYS_PTRACE in a container).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def available() -> bool:
    return Path(PY_SPY).exists()


def start(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen:
    """Begin sampling pid for `seconds` into out (py-spy's raw, collapsed-stack format)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        PY_SPY,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
    ]
    cmd += ["--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, out: Path) -> list[tuple[float, str]]:
    """Wait for the sampler; (percent of busy samples, frame) by self time, largest first."""
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {err.strip()[-300:]}")
    return top_frames(out.read_text())


def top_frames(collapsed: str, limit: int = 12) -> list[tuple[float, str]]:
    """Self time per leaf frame from collapsed stacks ("a;b;c 17" per line). Time inside C code
    (uvloop's loop, a transport's send) counts for the Python line that called it: py-spy samples
    Python stacks only unless --native."""
    self_time: Counter = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            self_time[_short(stack.rsplit(";", 1)[-1])] += int(count)
    total = sum(self_time.values()) or 1
    return [(100 * n / total, frame) for frame, n in self_time.most_common(limit)]


def _short(frame: str) -> str:
    """`f (/work/x/localmesh/downstream.py:70)` -> `f (localmesh/downstream.py:70)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("localmesh/", "site-packages/", "lib/python"):
        if marker in where:
            where = where[where.index(marker) :]
            break
    return f"{name} ({where})" if where else name
