"""Locust users for the soak (bench/soak.py), loaded next to loadtest/locustfile.py.

`SoakCreator` creates recipes through the site's JSON API, each with a title unique to the run, so the
soak can tell a recipe saved twice from two recipes. Every creation's outcome, this user's and the
locustfile's own (API and form), goes to SOAK_RECORD as one JSON line: the title (when unique), the
status the site answered (0: no answer) and the recipe ID it gave (only with a 2xx or the form's 303).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from locust import HttpUser, between, events, task

RECORD = open(os.environ["SOAK_RECORD"], "a", encoding="utf-8")  # noqa: SIM115 (open for the run)
RUN = os.environ.get("SOAK_RUN", "soak")
NUMBERS = itertools.count(1)
# The locustfile's creations: (method, name) as it names them.
SITE_CREATES = {("POST", "/api/recipes"), ("POST", "/new (form)")}


def record(title: str | None, status: int, recipe_id: str | None) -> None:
    RECORD.write(json.dumps({"title": title, "status": status, "id": recipe_id}) + "\n")
    RECORD.flush()


def _created_id(response: Any) -> str | None:
    """The ID of the recipe the site says it created: a 201's JSON, or the form's 303 Location."""
    if response is None:
        return None
    if response.status_code == 201:
        try:
            return response.json().get("id")
        except ValueError:
            return None
    location = response.headers.get("Location", "")
    if response.status_code == 303 and "/recipes/" in location:
        return location.rsplit("/recipes/", 1)[1].split("?")[0]
    return None


@events.request.add_listener
def _site_creation(request_type: str, name: str, response: Any = None, **_: Any) -> None:
    if (request_type, name) in SITE_CREATES:
        record(None, getattr(response, "status_code", 0) or 0, _created_id(response))


class SoakCreator(HttpUser):
    """Creates recipes with unique titles as fast as a few users can."""

    weight = 2
    wait_time = between(0.05, 0.3)

    @task
    def create(self) -> None:
        title = f"soak {RUN} {next(NUMBERS)}"
        payload = {"title": title, "author": "soak", "ingredients": ["water"], "steps": "Boil."}
        with self.client.post(
            "/api/recipes", json=payload, name="/api/recipes (soak)", catch_response=True
        ) as response:
            recipe_id = _created_id(response)
            record(title, response.status_code or 0, recipe_id)
            if recipe_id is None:
                response.failure(f"HTTP {response.status_code}")
