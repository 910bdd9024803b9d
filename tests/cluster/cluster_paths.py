"""Paths and pinned versions for the cluster path's offline checks (imported by tests and conftest; a
module of its own because `from conftest import ...` would be ambiguous beside other test folders)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SCRIPTS = ROOT / "scripts"
DATA = Path(__file__).resolve().parent / "data"

# The tools the scripts drive; each test's stand-ins answer for them.
TOOLS = ("kubectl", "istioctl", "kind", "docker", "podman", "curl", "gcloud", "python", "functions-framework")


def pinned_versions() -> dict[str, str]:
    """scripts/versions.env: the one place the cluster path pins versions."""
    out = {}
    for line in (SCRIPTS / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def kubernetes_schema_version() -> str:
    """The node image's Kubernetes minor, as kubernetes-validate names its schemas (1.36.4 -> 1.36.0)."""
    major, minor, *_ = pinned_versions()["KUBERNETES_VERSION"].split(".")
    return f"{major}.{minor}.0"
