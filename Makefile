# The egress lab's entry points. Every target runs from .venv, which `make setup` builds (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HTTPBIN_VENV := .venv-httpbin
READY := $(VENV)/.ready $(HTTPBIN_VENV)/.ready
PIP := pip install --quiet --disable-pip-version-check
HOST ?= 127.0.0.1
PORT ?= 8080
export HOST PORT
# Where the demo runs: local (localmesh on this machine) or cluster (kind/Istio: docs/cluster.md).
TARGET ?= local
# Recipes the demo creates per egress option.
N ?= 10
OPTIONS := passthrough blackhole serviceentry

.PHONY: help setup test lint run-idgen run-frontend run-httpbin clean up down status demo \
        $(addprefix demo-,$(OPTIONS))

help: ## list the targets
	@grep -hE '^[a-z0-9%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 24

setup: $(READY) ## create .venv and .venv-httpbin (idempotent)

$(VENV)/.ready: requirements-dev.txt constraints.txt idgen/requirements.txt frontend/requirements.txt \
                localmesh/requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "make setup: Python 3.11 or newer is needed; $(PYTHON) is " + sys.version.split()[0] + ". Run: make setup PYTHON=python3.12")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) -r requirements-dev.txt -c constraints.txt
	$(BIN)/$(PIP) --no-deps -e .
	touch $@

# httpbin.org's local stand-in lives in its own environment: it plays another machine, and its
# greenlet<3 pin clashes with locust's gevent.
$(HTTPBIN_VENV)/.ready: httpbin_standin/requirements.txt httpbin_standin/constraints.txt
	test -x $(HTTPBIN_VENV)/bin/python || $(PYTHON) -m venv $(HTTPBIN_VENV)
	$(HTTPBIN_VENV)/bin/$(PIP) -r httpbin_standin/requirements.txt -c httpbin_standin/constraints.txt
	touch $@

test: $(READY) ## run the whole test suite
	$(BIN)/pytest

lint: $(READY) ## ruff, plus shellcheck on scripts/ when installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@if command -v shellcheck >/dev/null; then shellcheck scripts/*.sh .ci/run; \
	 else echo "lint: shellcheck not installed (apt-get install shellcheck); scripts not checked"; fi

run-idgen: $(READY) ## idgen alone under gunicorn on $HOST:$PORT (UPSTREAM_URL, timeouts from env)
	exec $(BIN)/gunicorn -c idgen/gunicorn.conf.py 'idgen.app:create_app()'

run-frontend: $(READY) ## the recipe site alone on $HOST:$PORT (IDGEN_URL, RECIPES_DB from env)
	exec $(BIN)/gunicorn -c frontend/gunicorn.conf.py

run-httpbin: $(READY) ## the local stand-in for httpbin.org alone on $HOST:$PORT
	exec $(HTTPBIN_VENV)/bin/gunicorn --bind $(HOST):$(PORT) --workers 2 --access-logfile - httpbin:app

up: $(READY) ## start the local mesh in the background; prints one `name: url` line per endpoint
	$(BIN)/localmesh up

down: $(READY) ## stop every process of the local mesh
	$(BIN)/localmesh down

status: $(READY) ## what runs, where, and which egress option is applied
	$(BIN)/localmesh status

demo: $(READY) ## the three egress options in order, with metrics and a verdict (TARGET=local|cluster)
ifeq ($(TARGET),cluster)
	$(MAKE) $(addprefix cluster-demo-,$(OPTIONS))
else
	$(BIN)/python -m localmesh.demo -n $(N)
endif

demo-%: $(READY) ## one option (passthrough, blackhole, serviceentry) on the running stack, starting it if needed
ifeq ($(TARGET),cluster)
	$(MAKE) cluster-demo-$*
else
	$(BIN)/python -m localmesh.demo --keep -n $(N) $*
endif

include mk/cluster.mk mk/egresswatch.mk mk/load.mk

clean: ## remove the virtual environments and generated output
	rm -rf $(VENV) $(HTTPBIN_VENV) out .localmesh
