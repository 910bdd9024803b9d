"""docs/cluster.md and mk/cluster.mk agree with the scripts: targets, pinned versions, settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cluster_paths import ROOT, SCRIPTS, pinned_versions
from cluster_standins import make_standins

DOC = (ROOT / "docs" / "cluster.md").read_text()
MAKEFILE = ROOT / "mk" / "cluster.mk"
TARGETS = (
    "cluster-kind",
    "cluster-up",
    "cluster-deploy",
    "cluster-frontend",
    "cluster-frontend-deploy",
    "cluster-cleanup",
    "cluster-down",
)
OPTIONS = ("passthrough", "blackhole", "serviceentry")

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_dry_run(*targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-f", str(MAKEFILE), *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@needs_make
@pytest.mark.parametrize("option", OPTIONS)
def test_make_cluster_demo_runs_the_step(option: str) -> None:
    proc = make_dry_run(f"cluster-demo-{option}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"scripts/cluster-demo.sh {option}"


@needs_make
def test_make_has_no_demo_for_an_unknown_option() -> None:
    proc = make_dry_run("cluster-demo-allow-some")
    assert proc.returncode != 0
    assert "No rule to make target" in proc.stderr


@needs_make
@pytest.mark.parametrize("target", TARGETS)
def test_make_target_runs_an_existing_script(target: str) -> None:
    proc = make_dry_run(target)
    assert proc.returncode == 0, proc.stderr
    (command,) = proc.stdout.split()
    script = ROOT / command
    assert script.parent == SCRIPTS and script.exists(), command


def test_docs_walk_through_every_target() -> None:
    for target in TARGETS:
        assert f"make {target}" in DOC, target
    for option in OPTIONS:
        assert f"make demo-{option} TARGET=cluster" in DOC, option


def test_docs_name_the_pinned_versions() -> None:
    v = pinned_versions()
    assert f"Istio **{v['ISTIO_VERSION']}**" in DOC
    assert f"kind **{v['KIND_VERSION']}**" in DOC
    assert f"Kubernetes **{v['KUBERNETES_VERSION']}**" in DOC
    image, digest = v["KIND_NODE_IMAGE"].split("@sha256:")
    assert f"{image}@sha256:{digest[:8]}" in DOC
    assert v["IDGEN_IMAGE"] in DOC
    assert f"ISTIO_VERSION={v['ISTIO_VERSION']} sh -" in DOC


def test_docs_table_lists_every_setting_the_scripts_read() -> None:
    scripts = "\n".join(p.read_text() for p in SCRIPTS.glob("*.sh"))
    read = set(re.findall(r"\$\{([A-Z][A-Z_]+):[-=]", scripts))
    assert {"CLUSTER_NAME", "KUBE_CONTEXT", "GATEWAY_PORT", "SKIP_BUILD"} <= read  # the pattern finds them
    # Set by make or the shell, not by the user of the scripts.
    read -= {"HOST", "PORT", "RECIPES_DB"}
    table = DOC.split("## Settings", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in read if f"`{name}`" not in table)
    assert not missing, f"settings the scripts read but docs/cluster.md's table lacks: {missing}"


def test_docs_state_what_could_not_be_run() -> None:
    assert "## What is checked offline, and what could not be run here" in DOC
    assert "**Not run here, so not proven on a live cluster:**" in DOC


# The cluster path's own files: what the citation check reads.
OWN_FILES = sorted(
    [
        *SCRIPTS.glob("*.sh"),
        SCRIPTS / "versions.env",
        MAKEFILE,
        ROOT / "docs" / "cluster.md",
        *(ROOT / "manifests").rglob("*.yaml"),
        # The tests' helpers; the tests themselves name temporary files and this check's own patterns.
        *(ROOT / "tests" / "cluster").glob("cluster_*.py"),
        ROOT / "tests" / "cluster" / "conftest.py",
        *(ROOT / "tests" / "cluster" / "data").rglob("*.yaml"),
    ]
)
# A path in this repository, as the cluster files cite one (an upstream file is cited with its repository
# first, e.g. "istio/istio manifests/profiles/demo.yaml", and is not one of these folders).
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:scripts|mk|docs|idgen|frontend|tests/cluster|manifests/(?:base|components|overlays|istio|monitoring))"
    r"/\w[\w./-]*\.(?:py|sh|yaml|md|mk|env|txt))"
)


def test_citations_name_files_that_exist_in_the_repository() -> None:
    assert len(OWN_FILES) > 25
    cited = 0
    for path in OWN_FILES:
        for match in REPO_PATH.finditer(path.read_text()):
            cited += 1
            assert (ROOT / match.group(1)).exists(), (
                f"{path.relative_to(ROOT)} cites {match.group(1)}, which is not there"
            )
    assert cited > 20  # the pattern finds them


def test_nothing_cites_files_outside_the_repository() -> None:
    """Users get the repository, not the notes it was written from."""
    outside = re.compile(r"DESIGN\.md|/work/|/shared/|\bissue \d|the issue's")
    for path in OWN_FILES:
        found = outside.findall(path.read_text())
        assert not found, f"{path.relative_to(ROOT)} cites {found}"


def test_the_retry_comment_says_what_the_schedule_waits(tmp_path: Path) -> None:
    """lib.sh's retry with the defaults, its sleeps recorded: the comment and the docs state their sum."""
    standins = make_standins(tmp_path / "standins", ["sleep"])
    proc = subprocess.run(
        ["/bin/bash", "-c", f'source {SCRIPTS}/lib.sh; retry "never" false'],
        env={"PATH": f"{standins.bin}:/usr/bin:/bin", "STANDIN_HOME": str(standins.home), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "gave up waiting for: never (7 tries)" in proc.stderr
    slept = sum(float(c.args[0]) for c in standins.calls("sleep"))
    assert slept == 126
    lib = (SCRIPTS / "lib.sh").read_text()
    assert f"= {slept:.0f} s of waiting" in lib
    assert "4 minutes" not in lib
    assert f"{slept:.0f} s" in DOC


def test_idgen_base_image_is_pinned_by_digest_and_the_docs_say_where_it_comes_from() -> None:
    """A tag can be rebuilt under the same name; a digest cannot. The Dockerfile pins both (the tag says
    which release, the digest fixes the bytes), and docs/cluster.md names the digest's provenance."""
    froms = re.findall(r"^FROM (\S+)", (ROOT / "idgen" / "Dockerfile").read_text(), re.M)
    assert froms, "idgen/Dockerfile has no FROM line"
    for ref in froms:
        match = re.fullmatch(r"python:(3\.11\.\d+)-slim-(\w+)@sha256:([0-9a-f]{64})", ref)
        assert match, f"{ref} is not pinned by release, Debian suite and digest"
        assert f"python:{match[1]}-slim-{match[2]}@sha256:{match[3][:8]}" in DOC
