"""The cluster path's make targets as a user types them: `make help` on any sed, `make -j demo
TARGET=cluster` in order, `make cluster-demo DRY_RUN=1` printing every command and running none."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cluster_paths import ROOT, TOOLS
from cluster_standins import StandIns

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make is not installed")
OPTIONS = ("passthrough", "blackhole", "serviceentry")


def make(*args: str, cwd: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert MAKE is not None
    return subprocess.run(
        [MAKE, "--no-print-directory", *args],
        cwd=cwd,
        env={"HOME": os.environ.get("HOME", "/nonexistent"), "LANG": "C.UTF-8", "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_make
def test_help_needs_no_gnu_sed(tmp_path: Path) -> None:
    """BSD sed (macOS) reads `\\t` in a replacement as a plain `t`: a sed that does so must not matter."""
    bsd = tmp_path / "bsd-bin"
    bsd.mkdir()
    real_sed = shutil.which("sed")
    assert real_sed is not None
    # Every "\t" in the arguments becomes "t", then the real sed runs.
    fake = '#!/bin/bash\nargs=()\nfor a in "$@"; do args+=("${a//\\\\t/t}"); done\nexec REAL "${args[@]}"\n'
    (bsd / "sed").write_text(fake.replace("REAL", real_sed))
    (bsd / "sed").chmod(0o755)
    result = make("help", cwd=ROOT, path=f"{bsd}:/usr/local/bin:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split(None, 1) == ["help", "list the targets"], lines[0]
    for target in ("cluster-kind", "cluster-up", "cluster-deploy", "cluster-demo", "demo"):
        (line,) = [x for x in lines if x.split(" ", 1)[0] == target]
        assert re.fullmatch(rf"{re.escape(target)} +\S.*", line), line
    assert all(re.fullmatch(r"[a-z0-9%-]+ +\S.*", line) for line in lines), result.stdout


@needs_make
def test_demo_on_the_cluster_runs_the_steps_in_order_under_make_j(tmp_path: Path) -> None:
    """`make -j demo TARGET=cluster`: the three steps one after the other, never side by side (each step
    switches the one namespace's option; two at once would mix their traffic)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    shutil.copytree(ROOT / "mk", repo / "mk")
    log = tmp_path / "steps.log"
    step = repo / "scripts" / "cluster-demo.sh"
    # A step that takes a moment, so steps run side by side would interleave in the log.
    step.write_text(f'#!/bin/bash\necho "start $1" >>{log}\nsleep 0.3\necho "end $1" >>{log}\n')
    step.chmod(0o755)
    result = make("-j4", "demo", "TARGET=cluster", "READY=", cwd=repo, path=os.environ["PATH"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert log.read_text().split("\n")[:-1] == [f"{edge} {o}" for o in OPTIONS for edge in ("start", "end")]


@needs_make
def test_cluster_demo_dry_run_prints_every_command_and_runs_none(
    standins: StandIns, system_path: str
) -> None:
    """As a workshop leader types it, on a laptop with no cluster: stand-ins of every tool record any call."""
    assert {"kubectl", "istioctl", "curl", "kind", "docker", "python"} <= set(TOOLS)
    result = make(
        "cluster-demo",
        "DRY_RUN=1",
        cwd=ROOT,
        path=f"{standins.bin}:{system_path}",
        STANDIN_HOME=str(standins.home),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert standins.calls() == [], "a dry run executed: " + "\n".join(standins.lines())
    out = result.stdout
    steps = out.split("DRY_RUN=1: nothing was run")
    assert len(steps) == 4  # one per option, in order
    for option, text in zip(OPTIONS, steps, strict=False):
        printed = [line[2:] for line in text.splitlines() if line.startswith("+ ")]
        assert f"kubectl kustomize {ROOT}/manifests/overlays/{option}" in printed
        applied = [
            line for line in printed if " apply " in line and "-l egress-lab/option-resource=true" in line
        ]
        assert (
            len(applied) == 2 and "--dry-run=client" in applied[0]
        )  # list the option's resources, apply them
        assert any(
            line.startswith("istioctl --context kind-egress-lab proxy-config cluster") for line in printed
        )
        assert (
            "kubectl --context kind-egress-lab -n istio-system port-forward svc/prometheus 19090:9090"
            in printed
        )
        assert any("query=time()" in line for line in printed)
        assert (
            len(
                [
                    line
                    for line in printed
                    if re.fullmatch(r"curl -s -o /dev/null .* http://127\.0\.0\.1:8000/id", line)
                ]
            )
            == 20
        )
        assert f"{ROOT}/.venv/bin/python -m egresswatch report --prometheus http://127.0.0.1:19090" in printed
        assert all(
            line.split(" ", 1)[0] in {"kubectl", "istioctl", "curl", f"{ROOT}/.venv/bin/python"}
            for line in printed
        )
    assert "VERDICT" not in out
