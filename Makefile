# The egress lab's entry points. Every target runs from .venv, which `make setup` builds (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HTTPBIN_VENV := .venv-httpbin
READY := $(VENV)/.ready $(HTTPBIN_VENV)/.ready
PIP := pip install --quiet --disable-pip-version-check
# One URL of the running local stack, from its state file (so moved ports are followed), e.g.
# `$(STACK_ENDPOINT) site`; exit 3 when no stack runs, 4 when it runs no such endpoint (Prometheus).
STACK_ENDPOINT := $(BIN)/localmesh status --endpoint
HOST ?= 127.0.0.1
PORT ?= 8080
export HOST PORT
# Where the demo runs: local (localmesh on this machine) or cluster (kind/Istio: docs/cluster.md).
TARGET ?= local
# Recipes the demo creates per egress option.
N ?= 10
# Which proxies play the sidecar and the gateway of a stack that `make up` or a demo target starts:
# python (the local proxies, the default) or envoy (real Envoy, docs/architecture.md). A running stack
# keeps the data plane it was started with; apply, status, logs and down follow it.
DATAPLANE ?=
DATAPLANE_ARG = $(if $(DATAPLANE),--dataplane $(DATAPLANE))
include mk/options.mk
# Where generated pages and graphs go (the demo's page, `make graph`); tests point it at a temporary folder.
EGRESS_LAB_OUT ?= out
export EGRESS_LAB_OUT

.PHONY: help setup lock test test-unit lint run-idgen run-frontend run-httpbin clean up down status apply delete logs demo \
        $(addprefix demo-,$(OPTIONS))

# Every rule whose line carries a `## ` comment, one line per target name (a rule may name several).
help: ## list the targets
	@awk -F ':.*## ' '/^[a-z0-9 -]+:.*## / { n = split($$1, names, " "); \
	    for (i = 1; i <= n; i++) printf "%-26s%s\n", names[i], $$2 }' $(MAKEFILE_LIST)

setup: $(READY) ## create .venv and .venv-httpbin (idempotent)
	@echo "setup: done: $(VENV) and $(HTTPBIN_VENV) are ready" >&2

# Setup prints one progress line per step on stderr (stdout stays the target's own output, e.g.
# `make suggest > se.yaml` on a fresh clone).
step = @echo "setup: step $(1)/4: $(2)" >&2

# requirements-dev.txt holds every package of .venv (the components' and the tools'), pinned with hashes.
$(VENV)/.ready: requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "make setup: Python 3.11 or newer is needed; $(PYTHON) is " + sys.version.split()[0] + ". Run: make setup PYTHON=python3.12")'
	$(call step,1,create $(VENV) with $(PYTHON))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call step,2,install the pinned packages into $(VENV) (the longest step))
	@$(BIN)/$(PIP) --require-hashes -r requirements-dev.txt
	$(call step,3,install this project into $(VENV) (editable; no dependencies, so nothing unhashed))
	@$(BIN)/$(PIP) --no-deps -e .
	@touch $@

# httpbin.org's local stand-in lives in its own environment: it plays another machine, and its
# greenlet<3 pin clashes with locust's gevent.
$(HTTPBIN_VENV)/.ready: httpbin_standin/requirements.txt
	$(call step,4,create $(HTTPBIN_VENV) for the local stand-in of httpbin.org)
	@test -x $(HTTPBIN_VENV)/bin/python || $(PYTHON) -m venv $(HTTPBIN_VENV)
	@$(HTTPBIN_VENV)/bin/$(PIP) --require-hashes -r httpbin_standin/requirements.txt
	@touch $@

# The requirements.in files name the direct dependencies; uv compiles them for Python 3.11 and up on
# every platform into pinned, hashed requirements.txt files whose `# via` comments say where each pin
# comes from. Versions already pinned are kept (UPGRADE=1 lets uv take the newest). The components are
# constrained by the development environment, so every environment has the same versions.
LOCK = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --custom-compile-command "make lock" \
       $(if $(UPGRADE),--upgrade)
COMPONENTS := idgen frontend localmesh

lock: $(VENV)/.ready ## recompile the pinned requirements*.txt and constraints.txt from the requirements.in files (needs PyPI)
	$(LOCK) --generate-hashes requirements-dev.in -o requirements-dev.txt
	for c in $(COMPONENTS); do \
	    $(LOCK) --generate-hashes -c requirements-dev.txt $$c/requirements.in -o $$c/requirements.txt || exit; done
	$(LOCK) --generate-hashes httpbin_standin/requirements.in -o httpbin_standin/requirements.txt
	$(LOCK) --no-annotate -c requirements-dev.txt requirements-dev.in -o constraints.txt

test: $(READY) ## run the whole test suite (every tier)
	$(BIN)/pytest

test-unit: $(READY) ## the fast loop: only the unit tier (no processes; tests/conftest.py says which tests)
	$(BIN)/pytest -m unit

lint: $(READY) ## ruff (check + format), shellcheck on the shell scripts, mypy (strict; pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@command -v shellcheck >/dev/null || { echo "make lint: shellcheck is not installed: apt-get install shellcheck" >&2; exit 1; }
	shellcheck scripts/*.sh .ci/run
	$(BIN)/mypy

run-idgen: $(READY) ## idgen alone under gunicorn on $HOST:$PORT (UPSTREAM_URL, timeouts from env)
	exec $(BIN)/gunicorn -c idgen/gunicorn.conf.py 'idgen.app:create_app()'

run-frontend: $(READY) ## the recipe site alone on $HOST:$PORT (IDGEN_URL, RECIPES_DB from env)
	exec $(BIN)/gunicorn -c frontend/gunicorn.conf.py

run-httpbin: $(READY) ## the local stand-in for httpbin.org alone on $HOST:$PORT
	exec $(HTTPBIN_VENV)/bin/gunicorn --bind $(HOST):$(PORT) --workers 2 --access-logfile - httpbin:app

up: $(READY) ## start the local mesh in the background (DATAPLANE=python|envoy); prints one `name: url` line per endpoint
	@$(BIN)/localmesh up $(DATAPLANE_ARG)

down: $(READY) ## stop every process of the local mesh
	@$(BIN)/localmesh down

status: $(READY) ## what runs, where, and which egress option is applied
	@$(BIN)/localmesh status

# What `make apply` pushes: an option's overlay, a kustomize directory or one file (as -k / -f). A missing
# or unknown choice fails when the recipe runs (so `make -n apply` still shows what it would do).
APPLY_ARGS = $(if $(OPTION),$(if $(filter $(OPTION),$(OPTIONS)),-k manifests/overlays/$(OPTION)),\
    $(if $(K),-k $(K),$(if $(F),-f $(F))))
APPLY_USAGE = $(if $(OPTION),OPTION=$(OPTION) is not an egress option; choose one of: $(OPTIONS),\
    say what to apply: OPTION=passthrough|blackhole|serviceentry; K=DIR or F=FILE)

apply: $(READY) ## push to the running mesh, as istiod would: OPTION=<option>, K=DIR (kustomize) or F=FILE
	@$(if $(strip $(APPLY_ARGS)),$(BIN)/localmesh apply $(APPLY_ARGS),echo "make apply: $(strip $(APPLY_USAGE))" >&2; exit 2)

delete: $(READY) ## remove the objects of F=FILE from the mesh and push (kubectl delete -f)
	@$(if $(F),$(BIN)/localmesh delete -f $(F),echo "make delete: name the file: make delete F=FILE" >&2; exit 2)

logs: $(READY) ## idgen's sidecar log: an access log line per request, Istio's format (WORKLOAD=istio-ingressgateway)
	@$(BIN)/localmesh logs $(or $(WORKLOAD),idgen)

demo: $(READY) ## the three egress options in order, with metrics and a verdict (TARGET=local|cluster, DATAPLANE=python|envoy)
ifeq ($(TARGET),cluster)
	$(MAKE) cluster-demo
else
	@$(BIN)/python -m localmesh.demo -n $(N) $(DATAPLANE_ARG)
endif

# Named one by one: GNU make never applies a plain pattern rule (demo-%) to a .PHONY target.
demo-passthrough demo-blackhole demo-serviceentry: demo-%: $(READY) ## that one egress option on the running stack, starting it if needed
ifeq ($(TARGET),cluster)
	$(MAKE) cluster-demo-$*
else
	@$(BIN)/python -m localmesh.demo --keep -n $(N) $(DATAPLANE_ARG) $*
endif

include mk/cluster.mk mk/egresswatch.mk mk/load.mk

clean: ## remove the virtual environments and generated output
	rm -rf $(VENV) $(HTTPBIN_VENV) out .localmesh
