"""bench/RESULTS.md: each benchmark rewrites its own section (between markers), keeping the others.

A section records the date, the machine, the exact command and the figures, so a reader can rerun it
and compare; the file's head says what the targets are and where they come from.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path

from bench.procstat import machine

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

HEAD = """# Benchmark results

Written by `make bench` (or one of `make bench-proxy`, `make bench-chain`, `make bench-startup`) and
`make bench-soak`; each benchmark replaces its own section below and leaves the others as they were.
Every figure comes with its ratio to a baseline measured in the same run, on the same machine, minutes
apart at most: on a shared 2-core machine only such ratios compare well between runs.

"""


# The hand-written part (bottlenecks, profiles, settings changed) starts here; scripts never touch it.
ANALYSIS = "## Analysis"


def _section_re(key: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- bench:{key} -->\n.*?<!-- /bench:{key} -->\n", re.S)


def header_lines(title: str) -> list[str]:
    """What every section starts with: when, where, how."""
    load = os.getloadavg()
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", *_module_argv()])
    return [
        f"## {title}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {machine()}",
        f"- load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        "(other work on the machine shifts absolute figures, not much the ratios)",
        f"- command: `{command}`",
        "",
    ]


def _module_argv() -> list[str]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else sys.argv[0]
    return [name, *sys.argv[1:]]


def record(key: str, lines: list[str], notes: str = "", path: Path = RESULTS) -> None:
    """Replace (or append) section `key` with lines, then the hand-written notes for it."""
    block = f"<!-- bench:{key} -->\n" + "\n".join(lines).rstrip() + "\n"
    if notes:
        block += "\n" + notes.strip() + "\n"
    block += f"<!-- /bench:{key} -->\n"
    text = path.read_text() if path.exists() else HEAD
    pattern = _section_re(key)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif ANALYSIS in text:  # new sections go before the hand-written analysis
        before, _, after = text.partition(ANALYSIS)
        text = before.rstrip() + "\n\n" + block + "\n" + ANALYSIS + after
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"
