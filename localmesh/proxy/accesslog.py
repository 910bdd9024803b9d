"""The proxies' access log, in Istio's default text format, as `accessLogFile: /dev/stdout` writes it.

Istio's demo profile sets meshConfig.accessLogFile to /dev/stdout, and with the default
accessLogEncoding TEXT each proxy writes one line per request in the format istiod configures
(istio/istio pilot/pkg/model/telemetry_logging.go, EnvoyTextLogFormat):

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
    %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
    %REQUESTED_SERVER_NAME% %ROUTE_NAME%

The values that tell the egress story are Envoy's and pilot's: the cluster (`PassthroughCluster`,
`outbound|80||httpbin.org`) and the route (`allow_any`, `block_all`, `default`); a blackholed request
is a `direct_response` with `-` as upstream host and cluster and `block_all` as route, exactly as an
Istio sidecar logs it. What this proxy does not track is logged as Envoy logs a missing value, `-`:
the upstream's local address, the transport failure reason and the connection termination details.
BYTES_RECEIVED is the request body, as in Envoy; BYTES_SENT is the response body for the proxy's
own empty answers (block_all, route not found: 0, as in Envoy) but the whole response, headers
included, for the others (the proxy keeps the wire size behind istio_response_bytes, not the body's).
The upstream service time is measured to the end of the response. A request answered before it
was routed gets a fresh request ID in its line, as Envoy generates one before routing.

Writes are buffered and flushed once a second (Envoy buffers too and flushes every 10 s by default,
`--file-flush-interval-msec`; one second keeps `localmesh logs` current during a demo), so a request
costs one string format and one list append.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, TextIO

from localmesh.mesh.names import BLACKHOLE, PASSTHROUGH
from localmesh.proxy.http1 import REASONS

if TYPE_CHECKING:
    from localmesh.proxy.exchange import Exchange

FLUSH_INTERVAL = 1.0
MAX_BUFFERED = 1000  # lines; a busier second is flushed at once

# RESPONSE_CODE_DETAILS for the response flags this proxy sets (envoy StreamInfo::ResponseCodeDetails).
_DETAILS = {
    "NR": "route_not_found",
    "UH": "no_healthy_upstream",
    "UT": "upstream_response_timeout",
    "UF": "upstream_reset_before_response_started{remote_connection_failure}",
    "URX,UF": "upstream_reset_before_response_started{remote_connection_failure}",
    "UC": "upstream_reset_before_response_started{connection_termination}",
    "URX,UC": "upstream_reset_before_response_started{connection_termination}",
    "UPE": "upstream_reset_before_response_started{protocol_error}",
    "DC": "downstream_remote_disconnect",
}


def _address(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return "-"


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else "-"


def _path(url: bytes) -> bytes:
    """:path as Envoy sees it: an absolute-form target (a client using the proxy as HTTP_PROXY)
    becomes origin-form, as on a cluster where iptables sends the app's own origin-form request."""
    if url[:7].lower() != b"http://":
        return url
    slash = url.find(b"/", 7)
    return url[slash:] if slash >= 0 else b"/"


def format_line(ex: Exchange, duration: int) -> str:
    """One access log line for a finished exchange (newline included)."""
    down = ex.down
    transport = down.transport
    local = transport.get_extra_info("sockname") if transport is not None else None
    remote = transport.get_extra_info("peername") if transport is not None else None
    started = time.time() - (time.monotonic() - ex.start)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))
    stamp = f"[{stamp}.{int(started * 1000) % 1000:03d}Z]"
    if ex.status == 426 and ex.flags == "DPE":
        # HTTP/1.0 refused by Envoy's codec: the connection manager never saw the request's headers,
        # so every request field is "-" and the bytes sent are the body's (checked on Envoy 1.40).
        return (
            f'{stamp} "- - HTTP/1.1" 426 DPE low_version - "-" 0 {len(REASONS[426])} {duration} - '
            f'"-" "-" "-" "-" "-" - - {_address(local)} {_address(remote)} - -\n'
        )
    kind = ex.listener.kind
    cluster = ex.decision_cluster
    blackholed = kind == "outbound" and cluster == BLACKHOLE
    if kind == "inbound":
        app = ex.state.app
        cluster = f"inbound|{app[1]}||" if app else "-"
        route = "default"
    elif blackholed:
        cluster = "-"
        route = "block_all"
    elif cluster == PASSTHROUGH:
        route = "allow_any"
    else:
        # pilot names the default route of a registered host "default"; a gateway's route carries
        # the VirtualService route's name, which the bundle's VirtualService does not set.
        route = "default" if kind == "outbound" and cluster else "-"
    if blackholed:
        details, upstream = "direct_response", "-"
    else:
        upstream = _address(ex.address) if ex.written or ex.flags != "-" else "-"
        details = _DETAILS.get(ex.flags) or (
            "via_upstream" if ex.written else "request_overall_timeout" if ex.status == 408 else "-"
        )
    service_time = "-"
    if details == "via_upstream" and ex.sent_at:
        service_time = str(int((time.monotonic() - ex.sent_at) * 1000))
    user_agent = xff = rid = None
    for name, value in ex.headers:
        if name == b"user-agent":
            user_agent = value
        elif name == b"x-forwarded-for":
            xff = value
        elif name == b"x-request-id":
            rid = value
    if kind == "gateway":  # use_remote_address: the gateway appends the client's address
        xff = xff + b"," + down.peer_ip if xff else down.peer_ip
    head = len(ex.method) + len(ex.url) + 14 + sum(len(n) + len(v) + 4 for n, v in ex.headers)
    received = max(ex.req_bytes - head, 0)  # the same wire size count as the exchange's, less the head
    sent = 0 if details in ("direct_response", "route_not_found") else ex.resp_bytes
    if ex.request_id != b"-":  # the ID this proxy set (the gateway replaces a client's own)
        rid = ex.request_id
    elif rid is None:
        rid = str(uuid.uuid4()).encode()
    return (
        f"{stamp} "
        f'"{_text(ex.method)} {_text(_path(ex.url))} {"HTTP/1.0" if ex.http10 else "HTTP/1.1"}" '
        f'{ex.status} {ex.flags} {details} - "-" {received} {sent} {duration} '
        f'{service_time} "{_text(xff)}" "{_text(user_agent)}" "{_text(rid)}" '
        f'"{_text(ex.authority)}" "{upstream}" {cluster or "-"} - {_address(local)} {_address(remote)} '
        f"- {route}\n"
    )


class AccessLog:
    """Buffered access log lines on a text stream, flushed at most FLUSH_INTERVAL seconds later."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def record(self, ex: Exchange, duration: int) -> None:
        """Called by the exchange when it finishes (on the proxy's event loop)."""
        self._lines.append(format_line(ex, duration))
        if len(self._lines) >= MAX_BUFFERED:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write what is buffered (also called when the proxy stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            self.stream.write("".join(self._lines))
            self._lines.clear()
            self.stream.flush()
