# egresswatch: the egress report, the Kiali-style graph, the live console, ServiceEntry suggestions and
# the REGISTRY_ONLY lock-down check. Included by the top Makefile. Every target reads PROMETHEUS
# (default: the local stack's) or, when PROXIES is set, the proxies' /stats/prometheus directly.
PROMETHEUS ?= http://127.0.0.1:9090
NAMESPACE ?= recipes
WINDOW ?=
PROXIES ?=
CONSOLE_PORT ?= 20001
GRAPH_OUT ?= out/graph.svg
EGRESSWATCH := $(BIN)/python -m egresswatch
EW_SOURCE = $(if $(PROXIES),--proxies $(PROXIES),--prometheus $(PROMETHEUS)) $(if $(WINDOW),--window $(WINDOW)) \
            --namespace $(NAMESPACE)

.PHONY: report report-json graph console suggest lockdown-check

report: $(READY) ## egress from $NAMESPACE over $WINDOW (PROMETHEUS=URL or PROXIES="URL ...")
	$(EGRESSWATCH) report $(EW_SOURCE) --show-queries

report-json: $(READY) ## the egress report as JSON
	$(EGRESSWATCH) report $(EW_SOURCE) --json

graph: $(READY) ## the service graph, Kiali style: $GRAPH_OUT (.svg) and the .html page next to it
	$(EGRESSWATCH) graph $(EW_SOURCE) --out $(GRAPH_OUT)

console: $(READY) ## live graph + report on http://127.0.0.1:$CONSOLE_PORT/ (Ctrl-C stops it)
	exec $(EGRESSWATCH) console $(EW_SOURCE) --port $(CONSOLE_PORT)

suggest: $(READY) ## ServiceEntry YAML for every host seen through PassthroughCluster
	$(EGRESSWATCH) suggest $(EW_SOURCE)

lockdown-check: $(READY) ## exit 0 if REGISTRY_ONLY would have broken nothing seen, 1 if it would, 2 if unknown
	$(EGRESSWATCH) lockdown-check $(EW_SOURCE)
