"""The same apps without a mesh, on free 127.0.0.1 ports: the baseline a benchmark compares the
local stack (localmesh.stack.driver) against. Each process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from localmesh.stack.procs import free_port, running
from localmesh.stack.topology import HTTPBIN_BIN, LOOPBACK, ROOT, Ports

PY = sys.executable
# Variables that would send idgen's calls to some sidecar; the no-mesh baseline must not inherit them.
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy")


@dataclass
class Direct:
    """The apps without a mesh: the site's URL and each process's PID."""

    site: str
    pids: dict[str, int]


@contextlib.contextmanager
def no_mesh(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[Direct]:
    """The same httpbin, idgen and site wired directly (no gateway, no sidecar), each stopped by PID."""
    lo = LOOPBACK
    httpbin, idgen, site = free_port(), free_port(), free_port()
    # procs.running adds os.environ under env; an empty proxy variable counts as unset for requests
    # (urllib.request.getproxies_environment skips empty values).
    base = {key: "" for key in PROXY_VARS} | dict(env or {})
    logs = workdir / "logs"
    with (
        running(
            "httpbin",
            [str(HTTPBIN_BIN / "gunicorn"), "--bind", f"{lo}:{httpbin}", *httpbin_flags(), "httpbin:app"],
            f"http://{lo}:{httpbin}/get",
            logs / "httpbin.log",
            env=base,
        ) as httpbin_child,
        running(
            "idgen",
            [str(Path(PY).parent / "gunicorn"), "-c", str(ROOT / "idgen" / "gunicorn.conf.py")],
            f"http://{lo}:{idgen}/readyz",
            logs / "idgen.log",
            env=base | {"HOST": lo, "PORT": str(idgen), "UPSTREAM_URL": f"http://{lo}:{httpbin}/uuid"},
        ) as idgen_child,
        running(
            "frontend",
            [str(Path(PY).parent / "gunicorn"), "-c", str(ROOT / "frontend" / "gunicorn.conf.py")],
            f"http://{lo}:{site}/healthz",
            logs / "frontend.log",
            env=base
            | {
                "HOST": lo,
                "PORT": str(site),
                "IDGEN_URL": f"http://{lo}:{idgen}/id",
                "RECIPES_DB": str(workdir / "recipes.db"),
            },
        ) as frontend_child,
    ):
        yield Direct(
            f"http://{lo}:{site}",
            {"httpbin": httpbin_child.pid, "idgen": idgen_child.pid, "frontend": frontend_child.pid},
        )


def httpbin_flags() -> list[str]:
    """httpbin's worker flags exactly as the stack's plan() gives them, so both sides match."""
    from localmesh.stack.plan import plan
    from localmesh.stack.topology import Paths

    spec = next(s for s in plan(Ports(), Paths(Path("/nonexistent")), None) if s.name == "httpbin")
    cmd = spec.cmd
    start = cmd.index("--workers")
    end = next(i for i, arg in enumerate(cmd) if arg == "httpbin:app")
    return [a for a in cmd[start:end] if not a.startswith("--bind")]
