"""Load generators for the benchmarks: wrk (Debian's package) when present, else a Python client.

Both run a bounded number of keep-alive connections for a bounded time against one 127.0.0.1 URL
and return the same `Result`: requests, rate, p50/p99 latency, errors and the count per status.
`rate` paces each connection (a delay between its requests), for "latency at N requests/s".
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

WRK = shutil.which("wrk")
MARK = "BENCHJSON "

# wrk's Lua hooks (https://github.com/wg/wrk/blob/master/SCRIPTING): `done` prints one JSON line with
# the figures; `response` (only when statuses are wanted: it costs wrk some speed) counts statuses per
# thread, and `done` adds the threads' counts up; `delay` paces each connection.
_LUA_REQUEST = """
wrk.method = {method}
wrk.body = {body}
{headers}
"""
_LUA_STATUS = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
"""
_LUA_DELAY = """
function delay() return {delay_ms} end
"""
_LUA_DONE = """
function done(summary, latency, requests)
  local parts = {}
  {status_sum}
  local e = summary.errors
  io.write(string.format('BENCHJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "socket_errors": %d, "non2xx": %d, "statuses": {%s}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status, table.concat(parts, ", ")))
end
"""
_LUA_STATUS_SUM = """
  local counts = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do counts[code] = (counts[code] or 0) + n end
  end
  for code, n in pairs(counts) do table.insert(parts, string.format('"%d": %d', code, n)) end
"""


@dataclass
class Request:
    """What every request of a run looks like."""

    url: str
    method: str = "GET"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    """The figures of one run."""

    tool: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int = 0
    non2xx: int = 0  # wrk: answers with status >= 400
    statuses: Counter = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        return f"{self.rps:10.0f} req/s   p50 {self.p50_ms:7.2f} ms   p99 {self.p99_ms:7.2f} ms"


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for our ASCII values


def _wrk_script(req: Request, count_statuses: bool, delay_ms: float | None) -> str:
    headers = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in req.headers.items())
    script = _LUA_REQUEST.format(
        method=_lua_string(req.method),
        body=_lua_string(req.body.decode()) if req.body else "nil",
        headers=headers,
    )
    if count_statuses:
        script += _LUA_STATUS
    if delay_ms is not None:
        script += _LUA_DELAY.format(delay_ms=f"{delay_ms:.3f}")
    return script + _LUA_DONE.replace("{status_sum}", _LUA_STATUS_SUM if count_statuses else "")


def run_wrk(
    req: Request,
    connections: int,
    seconds: float,
    threads: int = 1,
    rate: float | None = None,
    count_statuses: bool = False,
) -> Result:
    """One bounded wrk run; `rate` (requests/s over all connections) paces each connection."""
    assert WRK, "wrk is not installed"
    delay_ms = connections / rate * 1000 if rate else None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_wrk_script(req, count_statuses, delay_ms))
    cmd = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        script.name,
    ]
    try:
        done = subprocess.run([*cmd, req.url], capture_output=True, text=True, timeout=seconds + 60)
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARK)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(line[len(MARK) :])
    return Result(
        "wrk",
        raw["requests"],
        raw["duration_us"] / 1e6,
        raw["p50_us"] / 1000,
        raw["p99_us"] / 1000,
        raw["max_us"] / 1000,
        raw["socket_errors"],
        raw["non2xx"],
        Counter({int(k): v for k, v in raw["statuses"].items()}),
    )


# --- the Python fallback -------------------------------------------------------------------------


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def _connection(
    req: Request, deadline: float, interval: float | None, latencies: list[float], statuses: Counter
) -> int:
    """One keep-alive connection sending requests until the deadline; returns its socket errors."""
    parts = urlsplit(req.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": parts.netloc, **req.headers}
    if req.body or req.method in ("POST", "PUT"):
        headers["Content-Length"] = str(len(req.body))
    head = f"{req.method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    wire = head.encode() + b"\r\n" + req.body
    errors = 0
    reader = writer = None
    next_at = time.perf_counter()
    while time.perf_counter() < deadline:
        if interval is not None:
            next_at += interval
            pause = next_at - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            start = time.perf_counter()
            writer.write(wire)
            status_line = await reader.readline()
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and value.strip().lower() == "close":
                    close = True
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            statuses[int(status_line.split()[1])] += 1
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()
    return errors


async def _python_run(req: Request, connections: int, seconds: float, rate: float | None) -> Result:
    latencies: list[float] = []
    statuses: Counter = Counter()
    interval = connections / rate if rate else None
    start = time.perf_counter()
    deadline = start + seconds
    errors = await asyncio.gather(
        *(_connection(req, deadline, interval, latencies, statuses) for _ in range(connections))
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    return Result(
        "python",
        len(latencies),
        elapsed,
        _percentile(latencies, 50) * 1000,
        _percentile(latencies, 99) * 1000,
        (latencies[-1] if latencies else 0.0) * 1000,
        sum(errors),
        sum(n for code, n in statuses.items() if code >= 400),
        statuses,
    )


def run_python(req: Request, connections: int, seconds: float, rate: float | None = None) -> Result:
    """The same run as run_wrk, from this process (uvloop when installed); slower than wrk."""
    try:
        import uvloop

        return uvloop.run(_python_run(req, connections, seconds, rate))
    except ImportError:
        return asyncio.run(_python_run(req, connections, seconds, rate))


def run(
    req: Request,
    connections: int,
    seconds: float,
    rate: float | None = None,
    count_statuses: bool = False,
    force_python: bool = False,
) -> Result:
    """wrk when installed (and not force_python), else the Python client."""
    if WRK and not force_python:
        return run_wrk(req, connections, seconds, rate=rate, count_statuses=count_statuses)
    return run_python(req, connections, seconds, rate)


def tool_name(force_python: bool = False) -> str:
    return (
        f"wrk ({WRK})" if WRK and not force_python else "Python asyncio client (bench/loadgen.py; wrk absent)"
    )
