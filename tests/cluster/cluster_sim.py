"""A cluster in virtual time, behind the stand-ins of kubectl, istioctl, curl and sleep, for the demo step.

What it models, because the demo's verdict depends on it:
- istiod pushes an applied option to idgen's sidecar PUSH_DELAY seconds after `kubectl apply` (or delete);
  until then idgen's calls leave under the previous option;
- the addon's Prometheus sees idgen's sidecar only at its scrapes, every SCRAPE_INTERVAL seconds (15 s, as
  the addon is configured), so a query returns the counters of the last scrape, not of now.

Time is virtual: every simulated tool call advances it by STEP seconds and a stand-in `sleep` by what the
script sleeps, so a run is exact and instant and no test depends on the machine's speed. The option
applied is read from the objects the script really applies (kustomize's output, labelled resources only),
and the answers are those of the real tools: `/id` status codes and bodies, `istioctl proxy-config cluster
-o json` lists, Prometheus API JSON.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cluster_standins import STANDIN, StandIns
from istio_labels import EGRESS_SERIES

OPTION_LABEL = ("egress-lab/option-resource", "true")
# The series idgen's sidecar grows under each option: Istio 1.31's labels (docs/istio-facts.md), of which
# the demo's verdict queries select some. A query answers the option whose series all its matchers fit.
_IDGEN = {
    "reporter": "source",
    "source_workload": "idgen",
    "source_workload_namespace": "recipes",
    "destination_service": "httpbin.org",
}
SERIES = {option: {**_IDGEN, **labels, "response_flags": "-"} for option, labels in EGRESS_SERIES.items()}
_MATCHER = re.compile(r'([a-z_]+)="([^"]*)"')
# The option resources each option applies, as `kubectl get -o name` prints them.
SIDECAR = "sidecar.networking.istio.io/default"
SERVICE_ENTRY = "serviceentry.networking.istio.io/httpbin-ext"


@dataclass
class State:
    now: float
    step: float
    push_delay: float
    scrape_interval: float
    scrape_phase: float
    # The option resources in the cluster: name -> the object.
    resources: dict[str, dict[str, Any]]
    # (time of the change, option the resources then make): istiod pushes each PUSH_DELAY later.
    changes: list[tuple[float, str]]
    # (time, option it left under) of every request idgen made to httpbin.org.
    requests: list[tuple[float, str]] = field(default_factory=list)

    def option_of_resources(self) -> str:
        if SERVICE_ENTRY in self.resources:
            return "serviceentry"
        sidecar = self.resources.get(SIDECAR, {})
        mode = sidecar.get("spec", {}).get("outboundTrafficPolicy", {}).get("mode", "ALLOW_ANY")
        return "blackhole" if mode == "REGISTRY_ONLY" else "passthrough"

    def pushed_option(self) -> str:
        """The option idgen's sidecar has now: the last change istiod has pushed."""
        return [option for at, option in self.changes if at + self.push_delay <= self.now][-1]

    def last_scrape(self) -> float:
        return self.scrape_phase + math.floor((self.now - self.scrape_phase) / self.scrape_interval) * (
            self.scrape_interval
        )


def _load(home: Path) -> State:
    raw = json.loads((home / "sim.json").read_text())
    raw["changes"] = [tuple(c) for c in raw["changes"]]
    raw["requests"] = [tuple(r) for r in raw["requests"]]
    return State(**raw)


def _save(home: Path, state: State) -> None:
    (home / "sim.json").write_text(json.dumps(asdict(state)))


def _labelled(path: str) -> dict[str, dict[str, Any]]:
    """The option resources of a manifest file, by `kubectl get -o name` name."""
    out = {}
    for doc in yaml.safe_load_all(Path(path).read_text()):
        labels = (doc or {}).get("metadata", {}).get("labels", {})
        if labels.get(OPTION_LABEL[0]) == OPTION_LABEL[1]:
            group = doc["apiVersion"].split("/")[0]
            out[f"{doc['kind'].lower()}.{group}/{doc['metadata']['name']}"] = doc
    return out


def _vector(value: float | None, at: float) -> str:
    result = [] if value is None else [{"metric": {}, "value": [at, str(value)]}]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


def _prometheus(state: State, query: str) -> str:
    if query == "time()":
        return json.dumps(
            {"status": "success", "data": {"resultType": "scalar", "result": [state.now, str(state.now)]}}
        )
    seen = [option for at, option in state.requests if at <= state.last_scrape()]
    if query.startswith("max(timestamp("):
        return _vector(state.last_scrape() if seen else None, state.now)
    wanted = dict(_MATCHER.findall(query.split("{", 1)[1].split("}", 1)[0]))
    count = sum(seen.count(option) for option, labels in SERIES.items() if wanted.items() <= labels.items())
    return _vector(count if count else None, state.now)


def answer(kind: str, tool: str, args: list[str], home: Path) -> dict[str, Any]:
    """One simulated tool call: the stand-in's response (stdout, exit, write_to)."""
    state = _load(home)
    state.now += state.step
    response: dict[str, Any] = {}
    if kind == "sleep":
        state.now += float(args[0])
    elif kind == "apply":
        wanted = _labelled(args[args.index("-f") + 1])
        if "--dry-run=client" in args:
            response = {"stdout": "".join(f"{name}\n" for name in wanted)}
        else:
            state.resources.update(wanted)
            state.changes.append((state.now, state.option_of_resources()))
    elif kind == "present":
        response = {"stdout": "".join(f"{name}\n" for name in state.resources)}
    elif kind == "delete":
        state.resources.pop(args[args.index("delete") + 1], None)
        state.changes.append((state.now, state.option_of_resources()))
    elif kind == "idgen":
        option = state.pushed_option()
        state.requests.append((state.now, option))
        if option == "blackhole":
            code, body = "502", {"error": "egress_blocked", "upstream": "httpbin.org"}
        else:
            code, body = "200", {"id": f"id-{len(state.requests)}"}
        response = {"stdout": code}
        if args[args.index("-o") + 1] != "/dev/null":
            response["write_to"] = {"-o": json.dumps(body)}
    elif kind == "proxy_config":
        clusters = [{"name": "outbound|80||httpbin.org"}] if state.pushed_option() == "serviceentry" else []
        response = {"stdout": json.dumps(clusters)}
    elif kind == "prometheus":
        query = next(a for a in args if a.startswith("query="))[len("query=") :]
        response = {"stdout": _prometheus(state, query)}
    _save(home, state)
    return response


def install(
    standins: StandIns,
    *,
    option: str,
    push_delay: float = 3.0,
    scrape_interval: float = 15.0,
    first_scrape_in: float = 10.0,
    earlier_requests: int = 5,
    step: float = 0.05,
) -> None:
    """Put the simulated cluster behind the stand-ins: `option` applied and pushed long ago, with
    `earlier_requests` already scraped; the next scrape `first_scrape_in` seconds after the run starts."""
    start = 1000.0
    resources = {SIDECAR: {"spec": {"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}}}
    if option != "passthrough":
        resources[SIDECAR]["spec"]["outboundTrafficPolicy"]["mode"] = "REGISTRY_ONLY"
    if option == "serviceentry":
        resources[SERVICE_ENTRY] = {}
    state = State(
        now=start,
        step=step,
        push_delay=push_delay,
        scrape_interval=scrape_interval,
        scrape_phase=start + first_scrape_in,
        resources=resources,
        changes=[(0.0, option)],
        requests=[(start - 100, option)] * earlier_requests,
    )
    _save(standins.home, state)
    sleep = standins.bin / "sleep"
    sleep.write_text(f"#!{sys.executable}\n{STANDIN}")
    sleep.chmod(0o755)
    real_kubectl = shutil.which("kubectl")
    if real_kubectl is None:
        import pytest  # here, not at the top: the stand-ins import this module on every call

        pytest.skip("kubectl is not installed: the simulated cluster applies kustomize's real output")
    sim = [
        ("sleep", (), "sleep"),
        ("kubectl", ("apply", "-f"), "apply"),
        ("kubectl", ("get", "sidecars.networking.istio.io,serviceentries.networking.istio.io"), "present"),
        ("kubectl", ("delete",), "delete"),
        ("istioctl", ("proxy-config", "cluster"), "proxy_config"),
        ("curl", ("api/v1/query",), "prometheus"),
        ("curl", ("/id",), "idgen"),
    ]
    for tool, has, kind in sim:
        standins.on(tool, *has, responses=[{"sim": kind}])
    standins.on("kubectl", "kustomize", responses=[{"exec": real_kubectl}])
    standins.on("kubectl", "get", "deployment", "idgen", stdout="deployment.apps/idgen\n")
    standins.on("kubectl", "get", "pods", "app=idgen", stdout="idgen-7d4b9-x2x9k")
    standins.on("kubectl", "port-forward", block=True)
    standins.on("python", "-m", "egresswatch", "report", stdout="EGRESS REPORT (stand-in)\n")


def requests(standins: StandIns) -> list[tuple[float, str]]:
    """(time, option it left under) of every request idgen made during the run."""
    return _load(standins.home).requests
