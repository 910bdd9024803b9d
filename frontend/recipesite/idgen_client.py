"""Get a new recipe ID from idgen (through IDGEN_URL, normally the ingress gateway's /id route).

Every way this can fail becomes an IdgenError with a code, the HTTP status the site answers with, and a
message a person can act on. idgen's own codes (egress_blocked, upstream_unreachable, ...) pass through;
failures of idgen itself get idgen_unreachable, idgen_timeout or bad_idgen_response.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

# What the site accepts as an ID: it ends up in URLs (/recipes/<id>) and as the primary key. idgen
# returns UUIDs; anything outside this conservative alphabet is treated as a bad response.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

SERVICEENTRY_HINT = (
    "To allow it, register httpbin.org in the mesh with a ServiceEntry (option 3): apply the overlay "
    "manifests/overlays/serviceentry (locally, in the bundle's folder: make apply OPTION=serviceentry; "
    "on a cluster: kubectl apply -k manifests/overlays/serviceentry)."
)


@dataclass
class IdgenError(Exception):
    code: str
    status: int  # what the site answers with: 502, 503 or 504
    message: str  # for people: what happened and, where possible, what to do
    detail: dict[str, Any] = field(default_factory=dict)  # idgen's JSON error body, when it sent one
    # Who sent the failing answer: "idgen" (its JSON error), "proxy" (a gateway or sidecar's own
    # reply), "behind_proxy" (something behind the proxy, not idgen), "unknown", or "nobody".
    answered_by: str = "nobody"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _explain(code: str, idgen_message: str, upstream: str) -> str:
    """The user-facing sentence for an error code idgen reported."""
    host = upstream or "its upstream"
    known = {
        "egress_blocked": (
            f"idgen could not get an ID: the mesh's egress policy (outboundTrafficPolicy REGISTRY_ONLY) "
            f"blocked idgen's call to {upstream or 'httpbin.org'}, an external host the mesh does not know. "
            + SERVICEENTRY_HINT
        ),
        "upstream_unreachable": f"idgen could not connect to {host} (connection refused or DNS failure).",
        "upstream_timeout": f"idgen's call to {host} timed out.",
        "upstream_error": f"{host} answered idgen with an error.",
        "bad_upstream_response": f"{host} answered idgen with something that is not a UUID.",
    }
    text = known.get(code, f"idgen reported an error ({code}).")
    # A blocked egress is explained in full above; for the rest idgen's own words add the detail.
    if idgen_message and code != "egress_blocked":
        text += f" idgen said: {idgen_message}"
    return text


class IdgenClient:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._local = threading.local()  # one pooled Session per thread: Session is not thread-safe

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def new_id(self, forwarded: Mapping[str, str] | None = None) -> str:
        """A fresh ID, or IdgenError. Never retries: a retry could hide the very failure the lab shows.
        forwarded: the request ID and trace headers of the request this ID is for (tracing.py)."""
        where = urlsplit(self.url).netloc or self.url
        headers = {**(forwarded or {}), "Accept": "application/json"}
        try:
            resp = self._session().get(self.url, timeout=self.timeout, headers=headers)
        except requests.RequestException as err:
            # A stall while reading the body arrives as ConnectionError(ReadTimeoutError), not Timeout.
            if isinstance(err, requests.Timeout) or (err.args and isinstance(err.args[0], ReadTimeoutError)):
                raise IdgenError(
                    "idgen_timeout",
                    504,
                    f"idgen (IDGEN_URL {self.url}) did not answer within {self.timeout:g} s.",
                ) from None
            raise IdgenError(
                "idgen_unreachable",
                503,
                f"Could not connect to idgen at {where} (IDGEN_URL {self.url}): "
                f"{type(err).__name__}. Is idgen (or the gateway in front of it) running?",
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code == 200 and isinstance(body, dict) and isinstance(body.get("id"), str):
            if ID_RE.match(body["id"]):
                return body["id"]
            raise IdgenError(
                "bad_idgen_response",
                502,
                f"idgen answered with an ID the site cannot use: {body['id'][:80]!r}.",
                answered_by="idgen",
            )
        if isinstance(body, dict) and isinstance(body.get("error"), str) and resp.status_code >= 400:
            code = body["error"]
            status = resp.status_code if resp.status_code in (502, 503, 504) else 502
            upstream = body.get("upstream") if isinstance(body.get("upstream"), str) else ""
            message = body.get("message") if isinstance(body.get("message"), str) else ""
            raise IdgenError(code, status, _explain(code, message, upstream), body, "idgen")
        raise _not_from_idgen(resp, where, self.url)


def _not_from_idgen(resp: requests.Response, where: str, url: str) -> IdgenError:
    """An answer without idgen's ID or idgen's JSON error: say who sent it, from its headers.

    Istio's gateways and inbound listeners answer with `server: istio-envoy` (they overwrite the
    upstream's Server header), a sidecar's outbound listener with Envoy's default `server: envoy`
    (istio/istio pilot/pkg/networking/util GetProxyHeadersFromProxyConfig). Envoy's router adds
    `x-envoy-upstream-service-time` only to a response that came from its upstream (envoyproxy/envoy
    source/common/router/router.cc), so a gateway's own reply (503 "no healthy upstream", or
    "upstream connect error ..." when idgen's sidecar is down) has none.
    """
    status = resp.status_code
    snippet = resp.text[:200].strip() or "(empty body)"
    server = resp.headers.get("server", "")
    code, site_status = {503: ("idgen_unreachable", 503), 504: ("idgen_timeout", 504)}.get(
        status, ("bad_idgen_response", 502)
    )
    if server in ("istio-envoy", "envoy") and "x-envoy-upstream-service-time" not in resp.headers:
        who = "proxy"
        message = (
            f"The mesh's proxy at {where} (server: {server}; IDGEN_URL {url}) answered HTTP {status} "
            f"itself, without reaching idgen: {snippet!r}. idgen did not answer. "
            + (
                "Is idgen (its pod, or the sidecar in front of it) running and ready?"
                if status in (502, 503, 504)
                else "Does the gateway route /id to idgen (Gateway and VirtualService applied)?"
            )
        )
    elif server in ("istio-envoy", "envoy"):
        who = "behind_proxy"
        message = (
            f"Through the mesh's proxy at {where} (server: {server}; IDGEN_URL {url}), something other "
            f"than idgen answered HTTP {status} without idgen's error body: {snippet!r}. Most likely "
            "idgen's sidecar, which could not reach the idgen container: is it running?"
        )
    else:
        who = "unknown"
        message = (
            f"The server at {where} (IDGEN_URL {url}"
            + (f", server: {server}" if server else "")
            + f") answered HTTP {status} without an ID or an error code: {snippet!r}. "
            "Is IDGEN_URL idgen's /id endpoint?"
        )
    return IdgenError(code, site_status, message, answered_by=who)
