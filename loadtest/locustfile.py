"""Locust users for the egress lab: people using the recipe site, and clients calling idgen directly.

Run it (the local stack must be up: `make up`):

    make load                      # headless, bounded, reports in out/ (see mk/load.mk)
    make load-ui                   # Locust's web UI on http://127.0.0.1:8089
    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s     # the same, by hand

Against a cluster (docs/cluster.md): the site is `make cluster-frontend` on this machine or the deployed
Cloud Function, the gateway is kind's published port:

    LOCUST_HOST=http://127.0.0.1:8080 GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT make load

Users
- `SiteVisitor` (weight 4): browses the recipe list (weight 10), views a recipe (5) and creates one
  (1), each half the time through the HTML pages (the form with its CSRF token) and half through the
  JSON API; creating is the only task that reaches idgen
  (site -> gateway -> idgen's sidecar -> idgen -> sidecar -> httpbin.org).
- `IdgenClient` (weight 1): GET /id straight through the ingress gateway, as the site does.
Run one kind alone by naming it: `locust -f loadtest/locustfile.py ... IdgenClient`.

Settings (Locust's own variables and flags work as usual: LOCUST_HOST, LOCUST_USERS, LOCUST_SPAWN_RATE,
LOCUST_RUN_TIME, LOCUST_HEADLESS, ...)
- LOCUST_HOST (or --host): the site, default http://127.0.0.1:8080 (the local stack's). Locust gives
  this host to every user class, so the idgen client takes its own URL from GATEWAY_URL.
- GATEWAY_URL: the ingress gateway, default http://127.0.0.1:8000 (the local stack's; on a kind
  cluster http://127.0.0.1:$GATEWAY_PORT, the same variable scripts/cluster-demo.sh reads).
- EXPECT_EGRESS: `allowed` (default; passthrough and serviceentry) or `blocked` (blackhole). When
  blocked, the answer the blackhole gives (the site's 502 `egress_blocked`, the gateway's /id 502
  `egress_blocked`) is an expected outcome: counted as a success under its own name, ending in
  "blocked (expected)". Anything else is a failure in both modes: a blocked call when egress should
  be allowed, a created recipe when it should be blocked, any other status or body.
- THINK_TIME: seconds each user waits between tasks, "MIN,MAX" (default "0.5,2").

Exit code: 0 when every request had an expected outcome; 1 when any did not (as Locust's
--exit-code-on-error does) or when a headless run made no request at all; 2 when a setting is invalid
or, in a headless run, the site or gateway is not reachable (checked before any load is sent).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from locust import HttpUser, between, events, task

log = logging.getLogger("loadtest")

DEFAULT_SITE = "http://127.0.0.1:8080"
DEFAULT_GATEWAY = "http://127.0.0.1:8000"
GATEWAY_URL = (os.environ.get("GATEWAY_URL") or DEFAULT_GATEWAY).rstrip("/")
EXPECT_EGRESS = (os.environ.get("EXPECT_EGRESS") or "allowed").strip().lower()
BLOCKED = EXPECT_EGRESS == "blocked"
BLOCKED_SUFFIX = " blocked (expected)"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PROBLEM_RE = re.compile(r'id="problem" data-code="([^"]*)"')


def _think_time() -> tuple[float, float]:
    raw = os.environ.get("THINK_TIME") or "0.5,2"
    try:
        low, high = (float(part) for part in raw.split(","))
    except ValueError:
        raise SystemExit(
            f"loadtest: THINK_TIME must be MIN,MAX in seconds (e.g. 0.5,2), got {raw!r}"
        ) from None
    if not 0 <= low <= high:
        raise SystemExit(f"loadtest: THINK_TIME needs 0 <= MIN <= MAX, got {raw!r}")
    return low, high


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_code(response: Any) -> str | None:
    """The error code of an answer: "error" in JSON (API, /id), data-code on the HTML form's notice."""
    body = _json(response)
    if isinstance(body.get("error"), str):
        return body["error"]
    found = PROBLEM_RE.search(response.text or "")
    return found.group(1) if found else None


def _describe(response: Any) -> str:
    """A short failure text that groups well in Locust's failure table (status and error code)."""
    return f"HTTP {response.status_code}, error {_error_code(response) or '-'}"


def _judge_failed_id_call(response: Any) -> None:
    """An answer without the ID (or recipe) that the request asked for: expected only if it is the
    blackhole's 502 egress_blocked and EXPECT_EGRESS=blocked; then it is renamed
    "<name> blocked (expected)" and counted as a success. Every other case is a failure."""
    blocked = response.status_code == 502 and _error_code(response) == "egress_blocked"
    if blocked and BLOCKED:
        response.request_meta["name"] += BLOCKED_SUFFIX
        response.success()
    elif blocked:
        response.failure("egress blocked (HTTP 502 egress_blocked) but EXPECT_EGRESS=allowed")
    else:
        response.failure(_describe(response))


def _judge_success(response: Any, what: str) -> None:
    """The request got what it asked for: right when egress is allowed, wrong when it should be blocked."""
    if BLOCKED:
        response.failure(f"EXPECT_EGRESS=blocked, but {what} (HTTP {response.status_code})")


class SiteVisitor(HttpUser):
    """Someone using the recipe site: mostly reading, now and then adding a recipe."""

    host = DEFAULT_SITE
    weight = 4
    wait_time = between(*_think_time())

    def on_start(self) -> None:
        self.known_ids: list[str] = []
        self.created = 0
        self.browse_list()

    # --- reading ---------------------------------------------------------------------------------

    @task(10)
    def browse_list(self) -> None:
        page = random.choice((1, 1, 1, 2))
        if random.random() < 0.5:
            with self.client.get(
                f"/api/recipes?page={page}", name="/api/recipes", catch_response=True
            ) as response:
                body = _json(response)
                if response.status_code != 200 or not isinstance(body.get("recipes"), list):
                    response.failure(f"list: {_describe(response)}")
                    return
                ids = [r["id"] for r in body["recipes"] if isinstance(r, dict) and "id" in r]
                self.known_ids = (ids + self.known_ids)[:50]
        else:
            with self.client.get(f"/?page={page}", name="/ (list page)", catch_response=True) as response:
                if response.status_code != 200 or "<h1>Recipes</h1>" not in response.text:
                    response.failure(f"list page: {_describe(response)}")

    @task(5)
    def view_recipe(self) -> None:
        if not self.known_ids:
            self.browse_list()  # nothing to view yet (an empty site, or every creation blocked)
            return
        recipe_id = random.choice(self.known_ids)
        if random.random() < 0.5:
            with self.client.get(
                f"/api/recipes/{recipe_id}", name="/api/recipes/[id]", catch_response=True
            ) as response:
                if response.status_code != 200 or _json(response).get("id") != recipe_id:
                    response.failure(f"recipe: {_describe(response)}")
        else:
            with self.client.get(
                f"/recipes/{recipe_id}", name="/recipes/[id] (page)", catch_response=True
            ) as response:
                if response.status_code != 200 or recipe_id not in response.text:
                    response.failure(f"recipe page: {_describe(response)}")

    # --- writing: the only task that reaches idgen -----------------------------------------------

    @task(1)
    def create_recipe(self) -> None:
        self.created += 1
        if random.random() < 0.5:
            self._create_with_api()
        else:
            self._create_with_form()

    def _recipe(self) -> dict[str, str]:
        return {
            "title": f"Load test soup {self.created}",
            "author": "locust",
            "steps": "Boil the water. Add the salt. Serve hot.",
        }

    def _create_with_api(self) -> None:
        payload = {**self._recipe(), "ingredients": ["water", "salt"]}
        with self.client.post(
            "/api/recipes", json=payload, name="/api/recipes", catch_response=True
        ) as response:
            new_id = _json(response).get("id")
            if response.status_code == 201 and isinstance(new_id, str):
                self.known_ids.insert(0, new_id)
                _judge_success(response, "the recipe was created")
            else:
                _judge_failed_id_call(response)

    def _create_with_form(self) -> None:
        # The form's CSRF token comes with the page (and its cookie), as in a browser.
        with self.client.get("/new", name="/new (form page)", catch_response=True) as page:
            token = CSRF_RE.search(page.text or "")
            if page.status_code != 200 or token is None:
                page.failure(f"form page: {_describe(page)}, csrf token {'found' if token else 'missing'}")
                return
        form = {**self._recipe(), "ingredients": "water\nsalt", "csrf_token": token.group(1)}
        with self.client.post(
            "/new", data=form, name="/new (form)", allow_redirects=False, catch_response=True
        ) as response:
            location = response.headers.get("Location", "")
            if response.status_code == 303 and "/recipes/" in location:
                self.known_ids.insert(0, location.rsplit("/recipes/", 1)[1].split("?")[0])
                _judge_success(response, "the recipe was created")
            else:
                _judge_failed_id_call(response)


class IdgenClient(HttpUser):
    """A client of idgen's public route: GET /id through the ingress gateway (GATEWAY_URL)."""

    host = DEFAULT_SITE  # unused: Locust sets every class's host to --host; /id goes to GATEWAY_URL
    weight = 1
    wait_time = between(*_think_time())

    @task
    def new_id(self) -> None:
        with self.client.get(
            f"{GATEWAY_URL}/id",
            name="/id (gateway)",
            headers={"Accept": "application/json"},
            catch_response=True,
        ) as response:
            if response.status_code == 200 and isinstance(_json(response).get("id"), str):
                _judge_success(response, "idgen returned an ID")
            else:
                _judge_failed_id_call(response)


# --- checks before and after the run ---------------------------------------------------------------


def _site_reachable(site: str) -> str | None:
    """None when the site answers /healthz (local checks only: never reaches idgen), else why not."""
    try:
        with urllib.request.urlopen(f"{site.rstrip('/')}/healthz", timeout=5) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except OSError as err:
        return str(getattr(err, "reason", err))


def _gateway_reachable(url: str) -> str | None:
    """None when something accepts TCP connections at the gateway (no request: no load, no metrics)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=5):
            return None
    except OSError as err:
        return str(err)


@events.init.add_listener
def _preflight(environment: Any, **_: Any) -> None:
    if EXPECT_EGRESS not in ("allowed", "blocked"):
        print(
            f"loadtest: EXPECT_EGRESS must be 'allowed' or 'blocked', got {EXPECT_EGRESS!r}", file=sys.stderr
        )
        raise SystemExit(2)
    options = environment.parsed_options
    if options is None or not options.headless:
        return  # the web UI lets the user fix the host before starting
    names = {cls.__name__ for cls in environment.user_classes}
    problems = []
    site = environment.host or DEFAULT_SITE
    if "SiteVisitor" in names and (why := _site_reachable(site)):
        problems.append(f"the site {site} does not answer /healthz ({why})")
    if "IdgenClient" in names and (why := _gateway_reachable(GATEWAY_URL)):
        problems.append(f"the gateway {GATEWAY_URL} does not accept connections ({why})")
    if problems:
        print(
            "loadtest: " + "; ".join(problems) + ". Start the local stack with `make up`, or point "
            "LOCUST_HOST (the site) and GATEWAY_URL (the gateway) at a running one.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    log.info("EXPECT_EGRESS=%s; site %s; gateway %s", EXPECT_EGRESS, site, GATEWAY_URL)


@events.quitting.add_listener
def _exit_code(environment: Any, **_: Any) -> None:
    """Fail the run on any unexpected outcome, and when nothing was measured at all."""
    total = environment.stats.total
    blocked = sum(
        e.num_requests for e in environment.stats.entries.values() if e.name.endswith(BLOCKED_SUFFIX)
    )
    log.info(
        "%d requests, %d unexpected failures, %d blocked as expected (EXPECT_EGRESS=%s)",
        total.num_requests,
        total.num_failures,
        blocked,
        EXPECT_EGRESS,
    )
    headless = environment.parsed_options is not None and environment.parsed_options.headless
    if total.num_failures:
        environment.process_exit_code = 1
    elif total.num_requests == 0 and headless:  # in the web UI, closing before a test is fine
        log.error("no request was made: nothing was measured")
        environment.process_exit_code = 1
