"""The recipe site as one HTTP Cloud Function: `recipes(request)`.

Run locally (from the repository root; `make run-frontend`):
    gunicorn -c frontend/gunicorn.conf.py
or with functions-framework's own server and its fixed settings:
    functions-framework --target=recipes --source=frontend/main.py --host=127.0.0.1 --port=8080
Deploy: see DEPLOY.md in this folder (the folder is the function's whole source).

Settings come from the environment once, when the module is loaded (see recipesite/config.py):
IDGEN_URL, IDGEN_TIMEOUT, RECIPES_DB, RECIPES_SECRET, RECIPES_BASE_PATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

import flask

# functions-framework 3.10.2 loads this file with importlib (module name "main") and appends its
# folder to sys.path (_function_registry.load_function_module), which makes `recipesite` importable
# both from the repository root (--source=frontend/main.py) and as a deployed function (frontend/ is
# /workspace). Doing the same here keeps the file importable by any other loader too (tests, REPL).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

from recipesite.config import Settings  # noqa: E402  (needs the path above)
from recipesite.site import Site  # noqa: E402

# Built at load time: the schema exists and the CSRF secret is agreed on before the first request.
# functions-framework loads the module once per process (in gunicorn's master, before workers fork).
recipe_site = Site(Settings.from_env())


def recipes(request: flask.Request) -> flask.Response:
    """HTTP entry point: every path and method of the site and its JSON API."""
    return recipe_site.handle(request)
