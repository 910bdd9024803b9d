"""The cluster scripts, run for real by bash against stand-in kubectl/istioctl/kind/docker/curl/gcloud that
record their arguments: the order and flags of what each script runs, its waits and its verdict, and its
messages when a tool is missing or the cluster misbehaves. Also shellcheck over scripts/."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import cluster_sim
import pytest
import yaml
from cluster_paths import MANIFESTS, SCRIPTS, pinned_versions
from cluster_standins import Run, StandIns, pid_alive, run_script

from localmesh.stack.procs import free_port

V = pinned_versions()
CLUSTER = "lab-test"
CONTEXT = f"kind-{CLUSTER}"
ANY = object()  # matches any single argument
SCRIPT_NAMES = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "lib.sh")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the scripts and manifests with stand-in idgen/frontend sources: the scripts find the
    repository from their own location, and these tests must not depend on other components' files."""
    root = tmp_path / "repo"
    shutil.copytree(SCRIPTS, root / "scripts")
    shutil.copytree(MANIFESTS, root / "manifests")
    (root / "idgen").mkdir()
    (root / "idgen" / "Dockerfile").write_text("FROM scratch\n")
    (root / "frontend").mkdir()
    (root / "frontend" / "main.py").write_text("")
    return root


@pytest.fixture
def run(repo: Path, standins: StandIns, system_path: str, tmp_path: Path):
    gateway_port = free_port()

    def _run(script: str, *args: str, path: str | None = None, **env: str) -> Run:
        base = {
            "STANDIN_HOME": str(standins.home),
            "STANDIN_CAPTURE": "--patch-file,-f",
            "CLUSTER_NAME": CLUSTER,
            "GATEWAY_PORT": str(gateway_port),
            "PROMETHEUS_PORT": "19999",
            "VERIFY_RETRIES": "3",
            "RETRY_DELAY_UNIT": "0.001",
            "PYTHON": str(standins.bin / "python"),
            "HOME": str(tmp_path),
        }
        return run_script(
            repo / "scripts" / script,
            *args,
            path=path or f"{standins.bin}:{system_path}",
            env={**base, **env},
        )

    _run.gateway_port = gateway_port  # type: ignore[attr-defined]
    yield _run
    # A script that failed to stop its port-forward leaves a stand-in `sleep`: stop it by its PID.
    for call in standins.calls():
        if "port-forward" in call.args and pid_alive(call.pid):
            os.kill(call.pid, signal.SIGTERM)


def assert_calls(standins: StandIns, expected: list[tuple[Any, ...]]) -> None:
    """The stand-ins were called exactly in this order with these arguments (ANY: any one argument)."""
    calls = [(c.tool, *c.args) for c in standins.calls()]
    shown = "\n".join(" ".join(map(str, c)) for c in calls)
    assert len(calls) == len(expected), f"calls were:\n{shown}"
    for got, want in zip(calls, expected, strict=True):
        assert len(got) == len(want) and all(w is ANY or g == w for g, w in zip(got, want, strict=True)), (
            f"expected {want}\ngot      {got}\nall calls:\n{shown}"
        )


def index_of(standins: StandIns, *words: str) -> int:
    for i, line in enumerate(standins.lines()):
        if all(w in line for w in words):
            return i
    raise AssertionError(f"no call with {words}:\n" + "\n".join(standins.lines()))


# ---------------------------------------------------------------- every script


@pytest.mark.parametrize("script", SCRIPT_NAMES)
def test_usage(script: str, run) -> None:
    shown = run(script, "--help")
    assert shown.returncode == 0
    assert shown.stdout.startswith("Usage:") or "Usage:" in shown.stdout
    wrong = run(script, "--no-such-flag")
    assert wrong.returncode == 2
    assert "Usage:" in wrong.stderr


@pytest.mark.parametrize("script", [*SCRIPT_NAMES, "lib.sh"])
def test_strict_mode_and_modes(script: str) -> None:
    path = SCRIPTS / script
    assert "set -euo pipefail" in path.read_text()
    # Scripts are executable; lib.sh is only sourced.
    assert bool(path.stat().st_mode & 0o111) == (script != "lib.sh")


def test_missing_tools_are_named_with_how_to_get_them(run, standins: StandIns, tmp_path: Path) -> None:
    # A PATH with only kubectl and docker: kind, istioctl, curl and jq are missing.
    partial = tmp_path / "partial-bin"
    partial.mkdir()
    for tool in ("kubectl", "docker"):
        (partial / tool).symlink_to(standins.bin / tool)
    result = run("cluster-up.sh", path=str(partial))
    assert result.returncode == 127
    assert "missing tools: istioctl curl jq kind" in result.stderr
    assert f"go install sigs.k8s.io/kind@{V['KIND_VERSION']}" in result.stderr
    assert f"ISTIO_VERSION={V['ISTIO_VERSION']} sh -" in result.stderr
    assert "apt-get install jq" in result.stderr
    assert standins.calls() == []  # nothing ran before the check


def test_missing_gcloud_is_named(run, standins: StandIns, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run("frontend-deploy-gcf.sh", path=str(empty), IDGEN_URL="http://gw.example/id")
    assert result.returncode == 127
    assert "missing tools: gcloud" in result.stderr
    assert "cloud.google.com/sdk/docs/install" in result.stderr


# ---------------------------------------------------------------- cluster-up


def versions_ok(standins: StandIns) -> None:
    standins.on("istioctl", "version", stdout=f"client version: {V['ISTIO_VERSION']}\n")
    standins.on("kind", "version", stdout=f"kind {V['KIND_VERSION']} go1.24.5 linux/amd64\n")


def test_cluster_up_runs_everything_in_order(run, standins: StandIns, repo: Path) -> None:
    versions_ok(standins)
    result = run("cluster-up.sh")
    assert result.returncode == 0, result.stderr
    addons = f"https://raw.githubusercontent.com/istio/istio/{V['ISTIO_VERSION']}/samples/addons"
    k = ("kubectl", "--context", CONTEXT)
    istio = repo / "manifests/istio"
    assert_calls(
        standins,
        [
            ("istioctl", "version", "--remote=false"),
            ("docker", "info"),
            ("kind", "version"),
            ("kind", "get", "clusters"),
            ("kind", "create", "cluster", "--name", CLUSTER, "--image", V["KIND_NODE_IMAGE"],
             "--wait", "120s", "--config=-"),
            # The gateway's Service type is set at install, in the IstioOperator; nothing patches it after.
            ("istioctl", "--context", CONTEXT, "install", "-y", "-f", str(istio / "mesh-allow-any.yaml"),
             "-f", str(istio / "gateway-nodeport.yaml")),
            (*k, "apply", "-f", f"{addons}/prometheus.yaml", "-f", f"{addons}/kiali.yaml"),
            (*k, "-n", "istio-system", "patch", "configmap", "prometheus", "--type", "merge",
             "--patch-file", ANY),
            *[(*k, "-n", "istio-system", "rollout", "status", f"deployment/{name}", "--timeout=300s")
              for name in ("istiod", "istio-ingressgateway", "prometheus", "kiali")],
        ],
    )  # fmt: skip
    calls = standins.calls()
    # kind's config, from stdin: the gateway's node port published on the host, loopback only; the node
    # port is the one the IstioOperator gives the gateway's port 80.
    kind_config = yaml.safe_load(calls[4].stdin)
    assert kind_config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = kind_config["nodes"]
    (gateway,) = yaml.safe_load((istio / "gateway-nodeport.yaml").read_text())["spec"]["components"][
        "ingressGateways"
    ]
    service = gateway["k8s"]["service"]
    assert service["type"] == "NodePort"
    (http,) = [port for port in service["ports"] if port["port"] == 80]
    assert node["extraPortMappings"] == [
        {
            "containerPort": http["nodePort"],
            "hostPort": run.gateway_port,
            "listenAddress": "127.0.0.1",
            "protocol": "TCP",
        }
    ]
    # The addon's Prometheus gets the rule file, byte for byte, under a key its config loads.
    patch = json.loads(calls[7].files["--patch-file"])
    assert patch == {"data": {"rules": (repo / "manifests/monitoring/egress-rules.yaml").read_text()}}
    assert f"gateway at http://127.0.0.1:{run.gateway_port}" in result.stdout


def test_cluster_up_on_another_context_creates_no_kind_cluster(run, standins: StandIns, repo: Path) -> None:
    """KUBE_CONTEXT set (a GKE cluster, say): Istio goes on that context, the gateway keeps the demo
    profile's LoadBalancer (no NodePort file), and kind is never called."""
    versions_ok(standins)
    result = run("cluster-up.sh", KUBE_CONTEXT="gke_demo_europe-west1_lab")
    assert result.returncode == 0, result.stderr
    assert standins.calls("kind") == [] and standins.calls("docker") == []
    (install,) = [c for c in standins.calls("istioctl") if "install" in c.args]
    assert install.args == [
        "--context", "gke_demo_europe-west1_lab", "install", "-y", "-f",
        str(repo / "manifests/istio/mesh-allow-any.yaml"),
    ]  # fmt: skip
    assert not [line for line in standins.lines("kubectl") if "patch service" in line]
    assert all(c.args[:2] == ["--context", "gke_demo_europe-west1_lab"] for c in standins.calls("kubectl"))
    assert "no kind cluster is created" in result.stderr
    assert "LoadBalancer address" in result.stdout


def test_kind_up_only_creates_the_cluster(run, standins: StandIns) -> None:
    versions_ok(standins)
    result = run("kind-up.sh")
    assert result.returncode == 0, result.stderr
    assert {c.tool for c in standins.calls()} == {"docker", "kind"}
    assert standins.lines()[-1].startswith(f"kind create cluster --name {CLUSTER}")


def test_cluster_up_reuses_an_existing_cluster_and_takes_mesh_mode(
    run, standins: StandIns, repo: Path
) -> None:
    versions_ok(standins)
    standins.on("kind", "get", "clusters", stdout=f"other\n{CLUSTER}\n")
    result = run("cluster-up.sh", MESH_MODE="registry-only")
    assert result.returncode == 0, result.stderr
    assert not [line for line in standins.lines("kind") if "create" in line]
    assert f"install -y -f {repo}/manifests/istio/mesh-registry-only.yaml -f" in standins.lines("istioctl")[1]
    assert "exists; reusing it" in result.stderr


def test_cluster_up_refuses_another_istioctl(run, standins: StandIns) -> None:
    standins.on("istioctl", "version", stdout="client version: 1.29.2\n")
    result = run("cluster-up.sh")
    assert result.returncode == 1
    assert f"istioctl is not {V['ISTIO_VERSION']} (it says: client version: 1.29.2)" in result.stderr
    assert "downloadIstio" in result.stderr
    assert not [line for line in standins.lines() if "create" in line or "install" in line]


def test_cluster_up_needs_a_running_docker(run, standins: StandIns) -> None:
    standins.on("docker", "info", exit=1, stderr="Cannot connect to the Docker daemon\n")
    versions_ok(standins)
    result = run("cluster-up.sh")
    assert result.returncode == 1
    assert "docker is installed but its engine does not answer" in result.stderr
    assert standins.lines() == ["istioctl version --remote=false", "docker info"]


def test_cluster_up_refuses_a_taken_gateway_port(run, standins: StandIns) -> None:
    versions_ok(standins)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", run.gateway_port))
        listener.listen()
        result = run("cluster-up.sh")
    assert result.returncode == 1
    assert f"port {run.gateway_port} is in use" in result.stderr
    assert not [line for line in standins.lines("kind") if "create" in line]


def test_cluster_up_rejects_an_unknown_mesh_mode(run, standins: StandIns) -> None:
    result = run("cluster-up.sh", MESH_MODE="deny-all")
    assert result.returncode == 1
    assert "MESH_MODE=deny-all" in result.stderr
    assert standins.calls() == []


@pytest.mark.parametrize("old", ["v0.31.0", "v0.20.0", "v0.9.12"])
def test_cluster_up_refuses_a_kind_older_than_v0_32(run, standins: StandIns, old: str) -> None:
    """Before v0.32, kind creates the 1.36 cluster but its `kind load` then fails: refuse up front."""
    standins.on("istioctl", "version", stdout=f"{V['ISTIO_VERSION']}\n")
    standins.on("kind", "version", stdout=f"kind {old} go1.20 linux/amd64\n")
    result = run("cluster-up.sh")
    assert result.returncode == 1
    assert f"kind is older than {V['KIND_MIN_VERSION']} (it says: kind {old}" in result.stderr
    assert "cannot load images into the pinned node image" in result.stderr
    assert f"go install sigs.k8s.io/kind@{V['KIND_VERSION']}" in result.stderr
    assert not [line for line in standins.lines() if "create" in line or "install" in line]


def test_cluster_up_warns_on_a_newer_but_unpinned_kind(run, standins: StandIns) -> None:
    standins.on("istioctl", "version", stdout=f"{V['ISTIO_VERSION']}\n")
    standins.on("kind", "version", stdout="kind v0.32.1 go1.24 linux/amd64\n")
    result = run("cluster-up.sh")
    assert result.returncode == 0, result.stderr
    assert f"warning: kind is not {V['KIND_VERSION']}" in result.stderr
    assert "older than" not in result.stderr


def test_cluster_up_retries_the_addons(run, standins: StandIns) -> None:
    versions_ok(standins)
    standins.on(
        "kubectl", "apply", "prometheus.yaml", responses=[{"exit": 1, "stderr": "no matches for kind\n"}, {}]
    )
    result = run("cluster-up.sh")
    assert result.returncode == 0, result.stderr
    assert len([line for line in standins.lines("kubectl") if "prometheus.yaml" in line]) == 2
    assert "not yet: addons applied (try 1 of 3)" in result.stderr


# ---------------------------------------------------------------- cluster-deploy


IMAGE_ID = "sha256:3f2a9c1b7d4e" + "0" * 52


def deploy_cluster(standins: StandIns, engine: str = "docker", image_id: str = IMAGE_ID) -> None:
    """An engine that builds, and a cluster whose idgen runs with its sidecar; kustomize is the real one."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the image override is checked with kustomize's real output")
    standins.on(engine, "image", "inspect", stdout=f"{image_id}\n")
    standins.on("kubectl", "kustomize", responses=[{"exec": kubectl}])
    standins.on("kubectl", "get", "pods", stdout="istio-proxy idgen")  # a native sidecar (init container)


def deployed_image(standins: StandIns) -> str:
    """The idgen image in the Deployment that `kubectl apply -f` was given."""
    (apply,) = [c for c in standins.calls("kubectl") if "apply" in c.args]
    (deployment,) = [d for d in yaml.safe_load_all(apply.files["-f"]) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["image"]


def test_cluster_deploy_builds_tags_by_content_loads_and_deploys(run, standins: StandIns, repo: Path) -> None:
    deploy_cluster(standins)
    result = run("cluster-deploy.sh")
    assert result.returncode == 0, result.stderr
    image = V["IDGEN_IMAGE"]
    tagged = f"{image.rsplit(':', 1)[0]}:{image.rsplit(':', 1)[1]}-3f2a9c1b7d4e"
    k = ("kubectl", "--context", CONTEXT)
    assert_calls(
        standins,
        [
            ("docker", "buildx", "version"),
            # No attestation: with Docker's containerd image store, `kind load docker-image` would fail.
            ("docker", "build", "--provenance=false", "--sbom=false", "-f", str(repo / "idgen/Dockerfile"),
             "-t", image, str(repo)),
            ("docker", "image", "inspect", "--format", "{{.Id}}", image),
            ("docker", "tag", image, tagged),
            ("kind", "load", "docker-image", tagged, "--name", CLUSTER),
            ("kubectl", "kustomize", str(repo / "manifests/base")),
            ("kubectl", "kustomize", ANY),
            (*k, "apply", "-f", ANY),
            (*k, "-n", "recipes", "rollout", "status", "deployment/idgen", "--timeout=180s"),
            (*k, "-n", "recipes", "get", "pods", "-l", "app=idgen", "-o", ANY),
        ],
    )  # fmt: skip
    # kustomize's images: put the content tag into the Deployment; everything else is manifests/base.
    assert deployed_image(standins) == tagged


def test_cluster_deploy_with_the_legacy_builder_passes_no_buildkit_flags(run, standins: StandIns) -> None:
    """Without buildx, `docker build` is the legacy builder: no attestations, and no such flags."""
    deploy_cluster(standins)
    standins.on("docker", "buildx", "version", exit=1, stderr="docker: 'buildx' is not a docker command.\n")
    result = run("cluster-deploy.sh")
    assert result.returncode == 0, result.stderr
    (build,) = [c for c in standins.calls("docker") if c.args[0] == "build"]
    assert build.args[:2] == ["build", "-f"]


def test_cluster_deploy_gives_a_changed_idgen_a_new_tag(run, standins: StandIns) -> None:
    """Redeploying a changed idgen changes the pod template, so Kubernetes rolls it out."""
    deploy_cluster(standins, image_id="sha256:" + "a" * 64)
    assert run("cluster-deploy.sh").returncode == 0
    first = deployed_image(standins)
    (standins.home / "calls.jsonl").unlink()
    standins.rules.clear()
    deploy_cluster(standins, image_id="sha256:" + "b" * 64)
    assert run("cluster-deploy.sh").returncode == 0
    second = deployed_image(standins)
    assert first.endswith("-aaaaaaaaaaaa") and second.endswith("-bbbbbbbbbbbb")


def test_cluster_deploy_pushes_to_image_off_kind(run, standins: StandIns) -> None:
    deploy_cluster(standins)
    repo_name = "europe-docker.pkg.dev/demo/lab/idgen"
    result = run("cluster-deploy.sh", KUBE_CONTEXT="gke_demo_europe-west1_lab", IMAGE=repo_name)
    assert result.returncode == 0, result.stderr
    tagged = f"{repo_name}:0.1.0-3f2a9c1b7d4e"
    assert standins.calls("kind") == []
    assert ["tag", V["IDGEN_IMAGE"], tagged] in [c.args for c in standins.calls("docker")]
    assert standins.lines("docker")[-1] == f"docker push {tagged}"
    assert deployed_image(standins) == tagged
    assert index_of(standins, "docker push") < index_of(standins, "apply", "-f")


@pytest.mark.parametrize("image", ["registry.example:5000/idgen:1.0", "egress-lab/idgen@sha256:" + "c" * 64])
def test_cluster_deploy_wants_a_repository_without_tag(run, standins: StandIns, image: str) -> None:
    result = run("cluster-deploy.sh", IMAGE=image)
    assert result.returncode == 1
    assert f"IMAGE={image} names a tag or digest: give the repository only" in result.stderr
    assert standins.calls() == []


def test_cluster_deploy_with_podman(run, standins: StandIns, repo: Path) -> None:
    """KIND_EXPERIMENTAL_PROVIDER=podman: podman builds (localhost/ names), saves an archive, kind loads
    it."""
    deploy_cluster(standins, engine="podman")
    result = run("cluster-deploy.sh", KIND_EXPERIMENTAL_PROVIDER="podman")
    assert result.returncode == 0, result.stderr
    tagged = "localhost/egress-lab/idgen:0.1.0-3f2a9c1b7d4e"
    assert standins.calls("docker") == []
    build, _inspect, tag, save = standins.calls("podman")
    assert build.args == ["build", "-f", str(repo / "idgen/Dockerfile"), "-t", V["IDGEN_IMAGE"], str(repo)]
    assert tag.args == ["tag", V["IDGEN_IMAGE"], tagged]
    assert save.args[:2] == ["save", "-o"] and save.args[3] == tagged
    (load,) = standins.calls("kind")
    assert load.args == ["load", "image-archive", save.args[2], "--name", CLUSTER]
    assert deployed_image(standins) == tagged


def test_scripts_refuse_another_kind_provider(run, standins: StandIns) -> None:
    result = run("cluster-deploy.sh", KIND_EXPERIMENTAL_PROVIDER="nerdctl")
    assert result.returncode == 1
    assert "KIND_EXPERIMENTAL_PROVIDER=nerdctl is not supported here: use docker (the default) or podman" in (
        result.stderr
    )
    assert standins.calls() == []


def test_kind_up_with_podman(run, standins: StandIns) -> None:
    versions_ok(standins)
    result = run("kind-up.sh", KIND_EXPERIMENTAL_PROVIDER="podman", STANDIN_ENV="KIND_EXPERIMENTAL_PROVIDER")
    assert result.returncode == 0, result.stderr
    assert standins.lines()[0] == "podman info"
    create = standins.calls("kind")[-1]
    assert create.args[:2] == ["create", "cluster"]
    assert create.env == {"KIND_EXPERIMENTAL_PROVIDER": "podman"}  # kind itself runs its node in podman


def test_cluster_deploy_notices_a_missing_sidecar(run, standins: StandIns) -> None:
    standins.on("kubectl", "get", "pods", stdout=" idgen")
    deploy_cluster(standins)
    result = run("cluster-deploy.sh")
    assert result.returncode == 1
    assert "idgen runs without an istio-proxy sidecar" in result.stderr
    assert "istio-injection=enabled" in result.stderr


def test_cluster_deploy_skip_build(run, standins: StandIns) -> None:
    deploy_cluster(standins)
    image = "europe-docker.pkg.dev/demo/lab/idgen:0.1.0-3f2a9c1b7d4e"
    result = run("cluster-deploy.sh", SKIP_BUILD="1", IMAGE=image)
    assert result.returncode == 0, result.stderr
    assert {c.tool for c in standins.calls()} == {"kubectl"}
    assert deployed_image(standins) == image


def test_cluster_deploy_skip_build_needs_a_tag(run, standins: StandIns) -> None:
    result = run("cluster-deploy.sh", SKIP_BUILD="1", IMAGE="europe-docker.pkg.dev/demo/lab/idgen")
    assert result.returncode == 1
    assert "has no tag or digest" in result.stderr


# ---------------------------------------------------------------- cluster-demo

SE_SEL = 'destination_service_name="httpbin.org"'
BH_SEL = 'destination_service_name="BlackHoleCluster"'
PT_SEL = 'destination_service_name="PassthroughCluster"'


def prom_value(value: float | None) -> dict[str, Any]:
    result = [] if value is None else [{"metric": {}, "value": [1760000000.0, str(value)]}]
    return {"stdout": json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})}


def prom_scalar(value: float) -> str:
    return json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [value, str(value)]}})


def option_applied(standins: StandIns) -> int:
    """The index of the call that applied the option resources (not the dry run that lists them)."""
    for i, call in enumerate(standins.calls()):
        if call.tool == "kubectl" and "apply" in call.args and "--dry-run=client" not in call.args:
            return i
    raise AssertionError("no kubectl apply:\n" + "\n".join(standins.lines()))


def demo_cluster(standins: StandIns, *, wanted: str, present: str, httpbin_clusters: str) -> None:
    """A cluster as kubectl/istioctl would show it to the demo step, with a Prometheus that has scraped
    idgen's sidecar since the wait (its clock at 1000, its newest sample at 1001)."""
    standins.on("curl", "api/v1/query", "query=time()", stdout=prom_scalar(1000))
    standins.on("curl", "api/v1/query", "query=max(timestamp(", **prom_value(1001))
    standins.on("kubectl", "get", "deployment", "idgen", stdout="deployment.apps/idgen\n")
    standins.on("kubectl", "kustomize", stdout="# the overlay, rendered\n")
    standins.on("kubectl", "apply", "--dry-run=client", stdout=wanted)
    standins.on(
        "kubectl", "get", "sidecars.networking.istio.io,serviceentries.networking.istio.io", stdout=present
    )
    standins.on("kubectl", "get", "pods", "app=idgen", stdout="idgen-7d4b9-x2x9k")
    standins.on("istioctl", "proxy-config", "cluster", stdout=httpbin_clusters)
    standins.on("kubectl", "port-forward", block=True)
    standins.on("curl", "/-/ready", responses=[{"exit": 7}, {}])  # the port-forward takes a moment
    standins.on("python", "-m", "egresswatch", "report", stdout="EGRESS REPORT (stand-in)\n")


def test_demo_blackhole_switches_waits_drives_and_passes(run, standins: StandIns, repo: Path) -> None:
    # Coming from serviceentry: the ServiceEntry must go, the Sidecar (same name) stays and is updated.
    demo_cluster(
        standins,
        wanted="sidecar.networking.istio.io/default\n",
        present="sidecar.networking.istio.io/default\nserviceentry.networking.istio.io/httpbin-ext\n",
        httpbin_clusters="[]",
    )
    # idgen first still answers 200 (config not yet pushed), then 502 egress_blocked.
    standins.on(
        "curl",
        "/id",
        responses=[
            {"stdout": "200", "write_to": {"-o": '{"id": "x"}'}},
            {"stdout": "502", "write_to": {"-o": '{"error": "egress_blocked", "upstream": "httpbin.org"}'}},
        ],
    )
    # Before the traffic, during the wait for the scrape (not yet, then all 20), and for the verdict.
    standins.on("curl", "api/v1/query", BH_SEL, responses=[prom_value(3), prom_value(10), prom_value(23)])
    standins.on("curl", "api/v1/query", PT_SEL, responses=[prom_value(7)])
    standins.on("curl", "api/v1/query", SE_SEL, responses=[prom_value(None)])
    result = run("cluster-demo.sh", "blackhole")
    assert result.returncode == 0, result.stderr
    out = result.stdout

    lines = standins.lines()
    deleted = index_of(standins, "delete", "serviceentry.networking.istio.io/httpbin-ext")
    applied = option_applied(standins)
    # Only the option resources of the rendered overlay: the Deployment keeps cluster-deploy's image.
    rendered = index_of(standins, "kustomize", str(repo / "manifests/overlays/blackhole"))
    apply_call = standins.calls()[applied]
    assert apply_call.args[2:-1] == ["apply", "-l", "egress-lab/option-resource=true", "-f"]
    assert rendered < applied
    assert index_of(standins, "apply", "--dry-run=client", "-l", "egress-lab/option-resource=true") < deleted
    assert deleted < applied
    assert not [line for line in lines if "delete" in line and "sidecar" in line]
    # The wait retried until the sidecar blocked, then Prometheus was port-forwarded and queried.
    probes = [c for c in standins.calls("curl") if c.args[-1].endswith("/id") and "-o" in c.args]
    assert probes[0].args[probes[0].args.index("-o") + 1] != "/dev/null"
    port_forward = index_of(standins, "port-forward", "svc/prometheus", "19999:9090")
    assert applied < port_forward
    assert "saw: /id -> 200" in result.stderr
    driven = [c for c in standins.calls("curl") if c.args[-1].endswith("/id") and "/dev/null" in c.args]
    assert len(driven) == 20
    assert all(c.args[-1] == f"http://127.0.0.1:{run.gateway_port}/id" for c in driven)
    # The report is the local demo's command, against the port-forwarded Prometheus.
    (report,) = standins.calls("python")
    assert report.args == ["-m", "egresswatch", "report", "--prometheus", "http://127.0.0.1:19999"]
    assert "EGRESS REPORT (stand-in)" in out
    # The verdict names the expected series and the growth of each.
    assert "blackhole        20  (expected >= 20)" in out
    assert "passthrough       0  (expected 0)" in out
    assert "serviceentry      0  (expected 0)" in out
    assert 'response_flags="-"' in out
    assert "answers         20 of 20 were 502" in out
    assert "VERDICT: PASS (blackhole" in out
    # The port-forward (a stand-in turned `sleep`) was stopped by its PID.
    pf_call = next(c for c in standins.calls("kubectl") if "port-forward" in c.args)
    assert not pid_alive(pf_call.pid)


# Against the simulated cluster (cluster_sim.py): istiod pushes 3 s after an apply, Prometheus scrapes every
# 15 s, in virtual time. The script's own defaults for the waits (7 tries, 2, 4, 8 ... s).
SIM_ENV = {"VERIFY_RETRIES": "7", "RETRY_DELAY_UNIT": "1"}


def old_order(repo: Path) -> str:
    """cluster-demo.sh as it was: `before` taken without waiting for a scrape after the wait's requests."""
    script = repo / "scripts" / "cluster-demo.sh"
    text = script.read_text()
    assert text.count("\nwait_for_scrape\n") == 1
    old = script.with_name("cluster-demo-old-order.sh")
    old.write_text(text.replace("\nwait_for_scrape\n", "\n"))
    return old.name


@pytest.mark.parametrize("option,previous", [("blackhole", "passthrough"), ("serviceentry", "blackhole")])
def test_demo_without_the_scrape_wait_fails_at_random_steps(
    run, standins: StandIns, repo: Path, option: str, previous: str
) -> None:
    """The old order: the first wait request leaves under the previous option (istiod has not pushed yet);
    `before` is taken before Prometheus has scraped it, so the previous option's series grows during the
    step and the verdict says FAIL although the cluster is right."""
    cluster_sim.install(standins, option=previous)
    result = run(old_order(repo), option, **SIM_ENV)
    left_under_previous = [o for _, o in cluster_sim.requests(standins)[5:] if o == previous]
    assert left_under_previous, (
        "the stand-ins must model the push delay: no wait request left under the old option"
    )
    assert re.search(rf"^  {previous} +{len(left_under_previous)}  \(expected 0\)", result.stdout, re.M), (
        result.stdout
    )
    assert f"VERDICT: FAIL ({option}" in result.stdout
    assert result.returncode == 1


@pytest.mark.parametrize(
    "option,previous",
    [("blackhole", "passthrough"), ("serviceentry", "blackhole"), ("passthrough", "serviceentry")],
)
def test_demo_waits_for_a_scrape_after_the_wait_and_passes(
    run, standins: StandIns, repo: Path, option: str, previous: str
) -> None:
    cluster_sim.install(standins, option=previous)
    result = run("cluster-demo.sh", option, **SIM_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    # Same cluster, same push delay: the wait's first requests still left under the previous option...
    assert previous in [o for _, o in cluster_sim.requests(standins)[5:]]
    # ...but they were scraped before `before`, so only this option's series grew.
    assert "waiting for one after" in result.stderr
    for other in {"passthrough", "blackhole", "serviceentry"} - {option}:
        assert re.search(rf"^  {other} +0  \(expected 0\)", result.stdout, re.M), result.stdout
    assert re.search(rf"^  {option} +20  \(expected >= 20\)", result.stdout, re.M), result.stdout
    assert f"VERDICT: PASS ({option}" in result.stdout
    # Order: the scrape wait (Prometheus's clock, then its newest sample) before the first `before` query.
    queries = [c.args[-2] for c in standins.calls("curl") if "api/v1/query" in c.args[-1]]
    assert queries[0] == "query=time()"
    assert queries[1].startswith("query=max(timestamp(")
    first_sum = next(i for i, q in enumerate(queries) if q.startswith("query=sum("))
    assert all(q.startswith(("query=time()", "query=max(timestamp(")) for q in queries[:first_sum])


def test_demo_says_so_when_prometheus_never_scrapes_idgen(run, standins: StandIns) -> None:
    # Prometheus answers, but has no sample of idgen's sidecar (not scraping the namespace, say).
    standins.on("curl", "api/v1/query", "query=max(timestamp(", **prom_value(None))
    demo_cluster(standins, wanted="sidecar.networking.istio.io/default\n", present="", httpbin_clusters="[]")
    standins.on("curl", "/id", stdout="200", write_to={"-o": '{"id": "x"}'})
    result = run("cluster-demo.sh", "passthrough")
    assert result.returncode == 1
    assert "newest sample of idgen's sidecar in Prometheus: none; waiting for one after 1000" in result.stderr
    assert "has not scraped idgen's sidecar since the wait" in result.stderr
    assert not [c for c in standins.calls("curl") if "/dev/null" in c.args and c.args[-1].endswith("/id")]


def test_demo_fails_the_verdict_when_the_expected_series_does_not_grow(run, standins: StandIns) -> None:
    demo_cluster(standins, wanted="sidecar.networking.istio.io/default\n", present="", httpbin_clusters="[]")
    standins.on("curl", "/id", stdout="200", write_to={"-o": '{"id": "x"}'})
    # Prometheus never counts the requests (scraping broken, say).
    standins.on("curl", "api/v1/query", responses=[prom_value(None)])
    result = run("cluster-demo.sh", "passthrough")
    assert result.returncode == 1
    assert "gave up waiting for: Prometheus to count the 20 requests" in result.stderr
    assert "Prometheus counts 0 of 20 so far" in result.stderr
    assert "passthrough       0  (expected >= 20)" in result.stdout
    assert "VERDICT: FAIL (passthrough" in result.stdout


def test_demo_fails_when_another_options_series_grows(run, standins: StandIns) -> None:
    demo_cluster(
        standins,
        wanted="sidecar.networking.istio.io/default\nserviceentry.networking.istio.io/httpbin-ext\n",
        present="sidecar.networking.istio.io/default\n",
        httpbin_clusters='[{"name": "outbound|80||httpbin.org"}]',
    )
    standins.on("curl", "/id", stdout="200", write_to={"-o": '{"id": "x"}'})
    standins.on("curl", "api/v1/query", SE_SEL, responses=[prom_value(0), prom_value(20)])
    # A stale policy: some calls still left through PassthroughCluster during the step.
    standins.on("curl", "api/v1/query", PT_SEL, responses=[prom_value(4), prom_value(9)])
    standins.on("curl", "api/v1/query", BH_SEL, responses=[prom_value(None)])
    result = run("cluster-demo.sh", "serviceentry")
    assert result.returncode == 1
    assert not [line for line in standins.lines() if " delete " in f" {line} "]  # nothing to remove
    assert "serviceentry     20  (expected >= 20)" in result.stdout
    assert "passthrough       5  (expected 0)" in result.stdout
    assert 'destination_service_namespace="recipes"' in result.stdout
    assert "VERDICT: FAIL (serviceentry" in result.stdout


def test_demo_says_what_it_saw_when_the_mesh_never_behaves(run, standins: StandIns) -> None:
    demo_cluster(standins, wanted="sidecar.networking.istio.io/default\n", present="", httpbin_clusters="[]")
    standins.on("curl", "/id", stdout="200", write_to={"-o": '{"id": "x"}'})
    result = run("cluster-demo.sh", "blackhole")
    assert result.returncode == 1
    assert "saw: /id -> 200; httpbin.org clusters in idgen's sidecar: 0" in result.stderr
    assert "the cluster does not behave as blackhole" in result.stderr
    assert len([line for line in standins.lines("curl") if line.endswith("/id")]) == 3  # VERIFY_RETRIES
    assert not [line for line in standins.lines() if "port-forward" in line]


def test_demo_passthrough_waits_for_the_serviceentry_cluster_to_go(run, standins: StandIns) -> None:
    """Both passthrough and serviceentry answer 200: the wait also checks idgen's sidecar config."""
    demo_cluster(
        standins,
        wanted="sidecar.networking.istio.io/default\n",
        present="sidecar.networking.istio.io/default\nserviceentry.networking.istio.io/httpbin-ext\n",
        httpbin_clusters="[]",
    )
    standins.on(
        "istioctl",
        "proxy-config",
        responses=[{"stdout": '[{"name": "outbound|80||httpbin.org"}]'}, {"stdout": "[]"}],
    )
    standins.rules.insert(0, standins.rules.pop())  # this rule before demo_cluster's
    standins.on("curl", "/id", stdout="200", write_to={"-o": '{"id": "x"}'})
    standins.on("curl", "api/v1/query", PT_SEL, responses=[prom_value(0), prom_value(20)])
    standins.on("curl", "api/v1/query", responses=[prom_value(None)])
    result = run("cluster-demo.sh", "passthrough")
    assert result.returncode == 0, result.stderr
    assert "httpbin.org clusters in idgen's sidecar: 1" in result.stderr
    assert len(standins.lines("istioctl")) == 2
    assert "VERDICT: PASS (passthrough" in result.stdout


def test_demo_uses_a_given_prometheus(run, standins: StandIns) -> None:
    demo_cluster(standins, wanted="sidecar.networking.istio.io/default\n", present="", httpbin_clusters="[]")
    standins.on("curl", "/id", stdout="200", write_to={"-o": '{"id": "x"}'})
    standins.on("curl", "api/v1/query", PT_SEL, responses=[prom_value(0), prom_value(20)])
    standins.on("curl", "api/v1/query", responses=[prom_value(None)])
    result = run(
        "cluster-demo.sh", "passthrough", PROMETHEUS_URL="http://prometheus.example:9090", DEMO_REQUESTS="20"
    )
    assert result.returncode == 0, result.stderr
    assert not [line for line in standins.lines() if "port-forward" in line]
    assert standins.calls("python")[0].args[-1] == "http://prometheus.example:9090"


def test_demo_needs_idgen_deployed(run, standins: StandIns) -> None:
    standins.on(
        "kubectl", "get", "deployment", "idgen", exit=1, stderr='deployments.apps "idgen" not found\n'
    )
    result = run("cluster-demo.sh", "passthrough")
    assert result.returncode == 1
    assert "run make cluster-deploy first" in result.stderr


def test_demo_rejects_an_unknown_option(run, standins: StandIns) -> None:
    result = run("cluster-demo.sh", "allow-some")
    assert result.returncode == 2
    assert "passthrough|blackhole|serviceentry" in result.stderr
    assert standins.calls() == []


# ---------------------------------------------------------------- cleanup, down, frontend


def test_cleanup_deletes_option_resources_then_base(run, standins: StandIns, repo: Path) -> None:
    result = run("cleanup.sh")
    assert result.returncode == 0, result.stderr
    k = ("kubectl", "--context", CONTEXT)
    assert_calls(
        standins,
        [
            (*k, "-n", "recipes", "delete", "sidecars.networking.istio.io,serviceentries.networking.istio.io",
             "-l", "egress-lab/option-resource=true", "--ignore-not-found"),
            (*k, "delete", "-k", str(repo / "manifests/base"), "--ignore-not-found", "--wait=true"),
        ],
    )  # fmt: skip


def test_cluster_down_deletes_only_its_kind_cluster(run, standins: StandIns) -> None:
    standins.on("kind", "get", "clusters", stdout=f"{CLUSTER}\n")
    result = run("cluster-down.sh")
    assert result.returncode == 0, result.stderr
    assert_calls(standins, [("kind", "get", "clusters"), ("kind", "delete", "cluster", "--name", CLUSTER)])


def test_cluster_down_refuses_another_context(run, standins: StandIns) -> None:
    standins.on("kind", "get", "clusters", stdout=f"{CLUSTER}\n")
    result = run("cluster-down.sh", KUBE_CONTEXT="gke_demo_europe-west1_lab")
    assert result.returncode == 1
    assert "is not the lab's kind cluster" in result.stderr and "make cluster-cleanup" in result.stderr
    assert standins.calls() == []


def test_cluster_down_without_a_cluster_does_nothing(run, standins: StandIns) -> None:
    result = run("cluster-down.sh")
    assert result.returncode == 0
    assert standins.lines() == ["kind get clusters"]
    assert f"no kind cluster named {CLUSTER}" in result.stderr


def test_frontend_local_points_at_the_gateway(run, standins: StandIns, repo: Path) -> None:
    result = run("frontend-local.sh", VENV_BIN=str(standins.bin), STANDIN_ENV="IDGEN_URL", PORT="18081")
    assert result.returncode == 0, result.stderr
    (call,) = standins.calls()
    assert call.tool == "functions-framework"
    assert call.args == ["--target=recipes", "--source=frontend/main.py", "--host=127.0.0.1", "--port=18081"]
    assert call.env == {"IDGEN_URL": f"http://127.0.0.1:{run.gateway_port}/id"}
    assert call.cwd == str(repo)


def test_frontend_deploy_runs_gcloud_functions_deploy(run, standins: StandIns, repo: Path) -> None:
    standins.on("gcloud", "projects", "describe", stdout="123456789012\n")
    result = run(
        "frontend-deploy-gcf.sh",
        IDGEN_URL="http://203.0.113.7/id",
        GCP_PROJECT="demo-project",
        GCF_SECRET="recipes-csrf-secret",
    )
    assert result.returncode == 0, result.stderr
    assert_calls(
        standins,
        [
            ("gcloud", "projects", "describe", "demo-project", "--format=value(projectNumber)"),
            # --set-secrets fails unless the function's identity (2nd gen: the default compute service
            # account) may read the secret: granted first.
            ("gcloud", "secrets", "add-iam-policy-binding", "recipes-csrf-secret", "--project=demo-project",
             "--member=serviceAccount:123456789012-compute@developer.gserviceaccount.com",
             "--role=roles/secretmanager.secretAccessor"),
            ("gcloud", "functions", "deploy", "recipes", "--gen2", f"--runtime={V['GCF_RUNTIME']}",
             "--region=europe-west1", f"--source={repo}/frontend", "--entry-point=recipes", "--trigger-http",
             "--max-instances=1", "--set-env-vars=IDGEN_URL=http://203.0.113.7/id,RECIPES_DB=/tmp/recipes.db",
             "--allow-unauthenticated", "--set-secrets=RECIPES_SECRET=recipes-csrf-secret:latest",
             "--project=demo-project"),
        ],
    )  # fmt: skip


def test_frontend_deploy_grants_the_secret_to_a_given_service_account(run, standins: StandIns) -> None:
    standins.on("gcloud", "config", "get-value", "project", stdout="configured-project\n")
    account = "recipes-site@configured-project.iam.gserviceaccount.com"
    result = run(
        "frontend-deploy-gcf.sh",
        IDGEN_URL="http://203.0.113.7/id",
        GCF_SECRET="s",
        GCF_SERVICE_ACCOUNT=account,
    )
    assert result.returncode == 0, result.stderr
    config, grant, deploy = standins.calls("gcloud")
    assert config.args == ["config", "get-value", "project"]
    assert grant.args == [
        "secrets", "add-iam-policy-binding", "s", "--project=configured-project",
        f"--member=serviceAccount:{account}", "--role=roles/secretmanager.secretAccessor",
    ]  # fmt: skip
    assert f"--service-account={account}" in deploy.args


def test_frontend_deploy_without_a_secret_grants_nothing(run, standins: StandIns) -> None:
    result = run("frontend-deploy-gcf.sh", IDGEN_URL="http://203.0.113.7/id")
    assert result.returncode == 0, result.stderr
    (deploy,) = standins.calls("gcloud")
    assert deploy.args[:2] == ["functions", "deploy"]


def test_frontend_deploy_with_a_secret_needs_a_project(run, standins: StandIns) -> None:
    result = run("frontend-deploy-gcf.sh", IDGEN_URL="http://203.0.113.7/id", GCF_SECRET="s")
    assert result.returncode == 1
    assert "GCF_SECRET is set but no project is known: set GCP_PROJECT" in result.stderr
    assert not [line for line in standins.lines() if "deploy" in line or "add-iam" in line]


def test_frontend_deploy_requires_idgen_url(run, standins: StandIns) -> None:
    result = run("frontend-deploy-gcf.sh")
    assert result.returncode == 1
    assert "IDGEN_URL is required" in result.stderr
    assert standins.calls() == []


# ---------------------------------------------------------------- shellcheck

SHELLCHECK = shutil.which("shellcheck")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shellcheck_is_clean() -> None:
    # As `make lint` runs it: from the repository root, without -x (scripts/.shellcheckrc follows sources).
    root = SCRIPTS.parent
    scripts = sorted(str(p.relative_to(root)) for p in SCRIPTS.glob("*.sh"))
    proc = subprocess.run([SHELLCHECK, *scripts], cwd=root, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shellcheck_catches_a_broken_script(repo: Path) -> None:
    bad = repo / "scripts" / "bad.sh"
    bad.write_text(
        '#!/usr/bin/env bash\nset -euo pipefail\nsource "${BASH_SOURCE[0]%/*}/lib.sh"\nrm -rf $ROOT/out\n'
    )
    proc = subprocess.run(
        [SHELLCHECK, "scripts/bad.sh"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "SC2086" in proc.stdout  # the unquoted $ROOT
