"""gunicorn settings for the recipe site on this machine: the one place `make run-frontend` and the
local mesh (localmesh/stack/plan.py) take them from.

    gunicorn -c frontend/gunicorn.conf.py

The app is the function exactly as functions-framework loads it (functions_framework.create_app with
--target=recipes and --source=frontend/main.py; main.py registers it with @functions_framework.http),
served by gunicorn with the settings below instead of the fixed ones functions-framework's command
line passes (it offers no worker class, no timeouts).
Deployed as a Cloud Function, functions-framework's own command runs it (see DEPLOY.md).

Environment: HOST (default 127.0.0.1), PORT (8080), WORKERS (1), THREADS (128) - the names
functions-framework reads too - and GUNICORN_LOG_LEVEL (error, functions-framework's default).
"""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent  # frontend/
# gunicorn's own setting for import paths: recipesite (the worker class below) is imported by
# gunicorn's master before the app loads, so frontend/ must be on sys.path before functions-framework
# adds it.
pythonpath = str(HERE)

bind = f"{os.environ.get('HOST') or '127.0.0.1'}:{os.environ.get('PORT') or '8080'}"
wsgi_app = f"functions_framework:create_app(target='recipes', source={str(HERE / 'main.py')!r})"
# As functions-framework does: the module is loaded once, in the master, and workers are forked.
preload_app = True

# gthread with deadlines for reading a request (recipesite/server.py): a client that trickles its
# headers or body is cut after 10 s or 30 s. Until then it holds a thread, so there are threads for
# many at once: 100 slow clients leave 28 for everyone else. An idle thread costs little memory.
worker_class = "recipesite.server.DeadlineThreadWorker"
workers = int(os.environ.get("WORKERS") or 1)
threads = int(os.environ.get("THREADS") or 128)
# A connection that has sent nothing, or an idle keep-alive one, waits in the poller this long.
keepalive = 5

# Heartbeat limit for a worker's main loop (gthread keeps beating while its threads work).
timeout = 30
graceful_timeout = 10

# gunicorn 25.1+ opens a control socket under $XDG_RUNTIME_DIR or $HOME/.gunicorn, one path for
# every server of the user; the site does not use it.
control_socket_disable = True

errorlog = "-"
accesslog = None
loglevel = os.environ.get("GUNICORN_LOG_LEVEL") or "error"
