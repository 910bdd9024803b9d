"""CPU time and memory of a process, from /proc (Linux): what the proxy benchmark charges each proxy."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (fields 14 and 15 of /proc/<pid>/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; everything after its closing parenthesis is split.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15, counted from field 3
    return (utime + stime) / CLOCK_TICKS


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """Resident memory now (VmRSS), in MB (10^6 bytes, as Istio's figures)."""
    return _status_kb(pid, "VmRSS") * 1024 / 1e6


def peak_rss_mb(pid: int) -> float:
    """The most resident memory the process has had (VmHWM), in MB."""
    return _status_kb(pid, "VmHWM") * 1024 / 1e6


def private_mb(pid: int) -> float:
    """Memory only this process holds (Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup), in
    MB: its heap, stacks and written pages, without the pages of the executable and libraries it shares
    with every other process running the same files (which VmRSS counts in full for each)."""
    kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kb += int(line.split()[1])
    return kb * 1024 / 1e6


def machine() -> str:
    """One line about the machine: CPU model, core count, memory, kernel."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        mem = "unknown RAM"
    return f"{model}, {os.cpu_count()} cores, {mem}, Linux {os.uname().release}"


def descendants(pid: int) -> list[int]:
    """pid and every process below it (gunicorn's workers under its master), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of pid and its live descendants (a worker that exited meanwhile is not counted)."""
    total = 0.0
    for each in descendants(pid):
        with contextlib.suppress(OSError):  # exited while we looked
            total += cpu_seconds(each)
    return total
