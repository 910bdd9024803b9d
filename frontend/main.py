"""The recipe site as one HTTP Cloud Function: `recipes(request)`, registered with @functions_framework.http.

Run locally (from the repository root; `make run-frontend`):
    gunicorn -c frontend/gunicorn.conf.py
or with functions-framework's own server and its fixed settings:
    functions-framework --target=recipes --source=frontend/main.py --host=127.0.0.1 --port=8080
Deploy: see DEPLOY.md in this folder (the folder is the function's whole source).

The decorator declares the signature type (HTTP) in the code, so no --signature-type or
FUNCTION_SIGNATURE_TYPE can turn the function into an event handler. The function's name is still
named once by whoever serves it: functions-framework 3.10.2 requires a target (its CLI's --target is
required=True; create_app raises without one, _function_registry.get_function_target), and a Cloud
Function deploy names it with --entry-point.

functions-framework loads this file by path and appends its folder to sys.path before running it
(_function_registry.load_function_module), which is how `recipesite` is found, both from the
repository root and as a deployed function (frontend/ is /workspace).

Settings come from the environment once, when the module is loaded (see recipesite/config.py):
IDGEN_URL, IDGEN_TIMEOUT, RECIPES_DB, RECIPES_SECRET, RECIPES_BASE_PATH.
"""

from __future__ import annotations

import flask
import functions_framework
from recipesite.config import Settings
from recipesite.site import Site

# Built at load time: the schema exists and the CSRF secret is agreed on before the first request.
# functions-framework loads the module once per process (in gunicorn's master, before workers fork).
recipe_site = Site(Settings.from_env())


@functions_framework.http
def recipes(request: flask.Request) -> flask.Response:
    """HTTP entry point: every path and method of the site and its JSON API."""
    return recipe_site.handle(request)
