"""The soak benchmark, run briefly the way a user types it (`make bench-soak`): every component is
killed once under Locust load, and the soak's own count says nothing was lost or duplicated. No
figure is judged beyond those counts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_kills_every_component_and_loses_nothing() -> None:
    cmd = ["make", "-s", "bench-soak", "BENCH_SOAK_ARGS=--seconds 12 --users 3 --no-record"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for component in ("site", "gateway proxy", "sidecar proxy", "idgen", "httpbin stand-in"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {component}"))
        assert row.endswith("| yes | yes |"), row  # back on the same ports, answering 2xx
    assert int(re.search(r"\| created \(.*?\) \| ([\d,]+) \|", out).group(1).replace(",", "")) > 0, out
    assert "| lost (answered, not stored) | 0 |" in out
    assert re.search(r"\| duplicated \(.*?\) \| 0 \|", out), out
    assert "Verdict: held: 0 lost, 0 duplicated, 5 of 5 components back on the same ports" in out
