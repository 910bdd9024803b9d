"""gunicorn settings for idgen:  gunicorn -c idgen/gunicorn.conf.py 'idgen.app:create_app()'

Environment: HOST (default 0.0.0.0), PORT (8080), GUNICORN_WORKERS (2), GUNICORN_THREADS (8),
GUNICORN_LOG_LEVEL (info).
"""

import os

bind = f"{os.environ.get('HOST') or '0.0.0.0'}:{os.environ.get('PORT') or '8080'}"
# The same app the command line names, so `gunicorn -c idgen/gunicorn.conf.py` alone works too.
wsgi_app = "idgen.app:create_app()"

# gthread: each request mostly waits on the upstream call, so threads give concurrency cheaply;
# idle keep-alive connections wait in the worker's poller, not in a thread.
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS") or 2)
threads = int(os.environ.get("GUNICORN_THREADS") or 8)

# Heartbeat limit for a worker's main loop (gthread keeps beating while its threads work); a
# request itself is bounded by the upstream timeouts (1 s connect + 3 s read by default).
timeout = 30
# On SIGTERM, finish in-flight requests: a full upstream call fits many times over, and it stays
# under Kubernetes' default terminationGracePeriodSeconds (30 s) so the kubelet never SIGKILLs us.
graceful_timeout = 15
# The caller is a sidecar or gateway that pools connections to the app; closing idle ones after
# gunicorn's default 2 s invites the race where the proxy reuses a connection as it is being
# closed (a 503 "upstream connect error or disconnect/reset before headers").
keepalive = 75

# gunicorn 25.1+ opens a control socket under $XDG_RUNTIME_DIR or $HOME/.gunicorn by default
# (for gunicornc). idgen does not use it, and in the container $HOME is not writable
# (readOnlyRootFilesystem), so it stays off.
control_socket_disable = True

# Logs: gunicorn's own messages to stderr. No gunicorn access log: the app writes one JSON line per
# request with what gunicorn cannot see (upstream status, error code); both would log it twice.
errorlog = "-"
accesslog = None
loglevel = os.environ.get("GUNICORN_LOG_LEVEL") or "info"

# Worker heartbeat files go to tempfile's default directory (/tmp: an emptyDir in the Deployment,
# since the root filesystem is read-only).
