"""What the suite compares and how it reports it: answers flattened to named fields, the differences
between Envoy's fields (the reference) and the Python proxies', and the accepted differences listed
in docs/conformance.md (the one place where a difference may be accepted, each with its reason)."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACCEPTED_FILE = ROOT / "docs" / "conformance.md"

# Values that differ between any two requests, whoever answers: only their presence is compared.
VARYING = frozenset(
    {"date", "x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "traceparent", "tracestate"}
)
# Istio's metadata exchange headers: between proxies only, never seen by an app or an external host.
PEER_HEADERS = ("x-envoy-peer-metadata", "x-envoy-peer-metadata-id")

Fields = dict[str, str]


@dataclass(frozen=True)
class Difference:
    scenario: str
    field: str
    envoy: str | None  # None: Envoy's answer has no such field
    python: str | None

    def __str__(self) -> str:
        return f"{self.scenario}: {self.field}: envoy={_show(self.envoy)} python={_show(self.python)}"


def _show(value: str | None) -> str:
    return "(absent)" if value is None else repr(value)


def header_fields(prefix: str, headers: Mapping[str, str]) -> Fields:
    """`<prefix> <name>` -> value, lower-case names; varying values reduced to their presence and
    x-envoy-upstream-service-time to its being a number."""
    out: Fields = {}
    for name, value in headers.items():
        name = name.lower()
        if name in VARYING:
            value = "(present)"
        elif name == "x-envoy-upstream-service-time" and value.isdigit():
            value = "(a number)"
        out[f"{prefix} {name}"] = value
    return out


def response_fields(status: int | str, headers: Mapping[str, str], body: bytes) -> Fields:
    """An HTTP answer: status, response headers, body. A body echoed by httpbin (/anything, /get) is
    compared by what the upstream received (method, URL, arguments, data, each header), and then its
    length (content-length) is not: it depends on those headers."""
    out = {"status": str(status), **header_fields("header", headers)}
    echoed = _httpbin_echo(headers, body)
    if echoed is None:
        out["body"] = body.decode("latin-1")
        return out
    if "header content-length" in out:
        out["header content-length"] = "(present)"
    for key in ("method", "url", "args", "data"):
        if key in echoed:
            out[f"upstream {key}"] = json.dumps(echoed[key], sort_keys=True)
    out.update(header_fields("upstream header", echoed.get("headers", {})))
    return out


def _httpbin_echo(headers: Mapping[str, str], body: bytes) -> dict[str, object] | None:
    if not headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("headers"), dict) else None


def differences(scenario: str, envoy: Fields, python: Fields) -> list[Difference]:
    return [
        Difference(scenario, field, envoy.get(field), python.get(field))
        for field in sorted(envoy.keys() | python.keys())
        if envoy.get(field) != python.get(field)
    ]


@dataclass(frozen=True)
class Accepted:
    """One row of docs/conformance.md's table: a difference accepted for a reason."""

    scenario: str  # fnmatch pattern
    field: str  # fnmatch pattern
    reason: str

    def covers(self, difference: Difference) -> bool:
        return fnmatch.fnmatchcase(difference.scenario, self.scenario) and fnmatch.fnmatchcase(
            difference.field, self.field
        )


_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|\s*(.+?)\s*\|\s*$")


def accepted(path: Path = ACCEPTED_FILE) -> list[Accepted]:
    """The table rows of docs/conformance.md: | `scenario pattern` | `field pattern` | reason |."""
    rows = [Accepted(*m.groups()) for m in map(_ROW.match, path.read_text().splitlines()) if m]
    for row in rows:
        if not row.reason.strip():
            raise ValueError(f"{path}: the accepted difference {row.scenario} / {row.field} gives no reason")
    return rows


def unaccepted(found: Iterable[Difference], accepted_rows: list[Accepted] | None = None) -> list[Difference]:
    rows = accepted() if accepted_rows is None else accepted_rows
    return [d for d in found if not any(row.covers(d) for row in rows)]


def report(found: list[Difference]) -> str:
    """The assertion message: every difference on its own line, and where to accept one."""
    lines = [str(d) for d in found]
    return (
        f"{len(found)} difference(s) from Envoy (the reference) not listed in docs/conformance.md:\n  "
        + "\n  ".join(lines)
        + "\nFix the Python proxies, or list the difference there with its reason."
    )


def assert_none(found: list[Difference]) -> None:
    """Fails with the differences that docs/conformance.md does not accept."""
    left = unaccepted(found)
    assert not left, report(left)


def assert_same(scenario: str, envoy: Fields, python: Fields) -> None:
    assert_none(differences(scenario, envoy, python))


# --- metrics -----------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# A series: (proxy, metric name without Envoy's prefix, its labels sorted).
SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]


def istio_samples(proxy: str, text: str) -> dict[SeriesKey, float]:
    """The istio_* samples of a /stats/prometheus page. Envoy's stats logger names them envoy_istio_*:
    the prefix is dropped, as the local Prometheus's relabelling does."""
    out: dict[SeriesKey, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name = match.group(1).removeprefix("envoy_")
        if name.startswith("istio_"):
            labels = tuple(sorted(_PAIR.findall(match.group(2) or "")))
            out[(proxy, name, labels)] = float(match.group(3))
    return out


def delta(after: Mapping[SeriesKey, float], before: Mapping[SeriesKey, float]) -> dict[SeriesKey, float]:
    """What changed between two scrapes: new series (even at 0) and series that moved."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if k not in before or v != before[k]}


def _series_text(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def series_differences(
    scenario: str, envoy: Mapping[SeriesKey, float], python: Mapping[SeriesKey, float]
) -> list[Difference]:
    """Envoy's series against the Python proxies': a series in both with another value is a `value`
    difference; a series in one only is paired with the most alike one of the other (same proxy
    and metric) and each label that differs is reported on its own (`<proxy> <metric> <label>`);
    what has no counterpart at all is a `series` difference."""
    found: list[Difference] = []
    for key in sorted(envoy.keys() & python.keys()):
        if envoy[key] != python[key]:
            found.append(
                Difference(
                    scenario,
                    f"{key[0]} {key[1]}{_series_text(key[2])} value",
                    str(envoy[key]),
                    str(python[key]),
                )
            )
    python_only = sorted(python.keys() - envoy.keys())
    for key in sorted(envoy.keys() - python.keys()):
        candidates = [k for k in python_only if k[:2] == key[:2]]
        if not candidates:
            found.append(Difference(scenario, f"{key[0]} {key[1]} series", _series_text(key[2]), None))
            continue
        mine = dict(key[2])
        twin = max(candidates, key=lambda k: sum(mine.get(n) == v for n, v in k[2]))
        python_only.remove(twin)
        theirs = dict(twin[2])
        for label in sorted(mine.keys() | theirs.keys()):
            if mine.get(label) != theirs.get(label):
                found.append(
                    Difference(scenario, f"{key[0]} {key[1]} {label}", mine.get(label), theirs.get(label))
                )
        if envoy[key] != python[twin]:
            found.append(Difference(scenario, f"{key[0]} {key[1]} value", str(envoy[key]), str(python[twin])))
    for key in python_only:
        found.append(Difference(scenario, f"{key[0]} {key[1]} series", None, _series_text(key[2])))
    return found
