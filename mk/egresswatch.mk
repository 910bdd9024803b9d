# egresswatch: the egress report, the Kiali-style graph, the live console, ServiceEntry suggestions and
# the REGISTRY_ONLY lock-down check. Included by the top Makefile.
#
# Where every target reads its numbers, first match wins: PROXIES="URL ..." (the proxies'
# /stats/prometheus directly) or PROMETHEUS=URL when given; else the running local stack's Prometheus, or
# its proxies when it runs none (`localmesh status --endpoint` reads the stack's state, so moved ports are
# followed); else egresswatch's own default ($EGRESSWATCH_PROMETHEUS, or http://127.0.0.1:9090).
PROMETHEUS ?=
NAMESPACE ?= recipes
WINDOW ?=
PROXIES ?=
CONSOLE_PORT ?=
GRAPH_OUT ?= $(EGRESS_LAB_OUT)/graph.svg
EGRESSWATCH := $(BIN)/python -m egresswatch

# $(call ew_source,FLAGS): the source flags; FLAGS are added when the stack's proxies are read. The stack
# lookup runs in the recipe's shell: exit 4 means "runs no Prometheus", and localmesh says so on stderr.
ew_source = $(if $(PROXIES),--proxies $(PROXIES),$(if $(PROMETHEUS),--prometheus $(PROMETHEUS),$(if \
    $(EGRESSWATCH_PROMETHEUS),,$$( if url=$$($(STACK_ENDPOINT) prometheus); then echo --prometheus $$url; \
    elif [ $$? = 4 ]; then echo "egresswatch: reading the stack's proxies directly instead" >&2; \
    echo --proxies $$($(STACK_ENDPOINT) proxies) $(1); fi)))) \
    $(if $(WINDOW),--window $(WINDOW)) --namespace $(NAMESPACE)
# Counts (report, suggest, lockdown-check) from the proxies: everything since they started, at once,
# unless WINDOW asks for two scrapes that far apart.
ew_counts = $(call ew_source,$(if $(WINDOW),,--since-start))

.PHONY: report report-json graph console suggest lockdown-check

report: $(READY) ## egress from $NAMESPACE over $WINDOW (PROMETHEUS=URL or PROXIES="URL ...")
	@$(EGRESSWATCH) report $(ew_counts) --show-queries

report-json: $(READY) ## the egress report as JSON
	@$(EGRESSWATCH) report $(ew_counts) --json

graph: $(READY) ## the service graph, Kiali style: $GRAPH_OUT (.svg) and the .html page next to it
	@$(EGRESSWATCH) graph $(ew_source) --out $(GRAPH_OUT)

# The running stack serves a console already (`make up` prints its URL); CONSOLE_PORT=N starts another.
console: $(READY) ## live graph + report on the stack's console URL, or http://127.0.0.1:$CONSOLE_PORT/ (Ctrl-C stops it)
	@if [ -z "$(CONSOLE_PORT)" ] && url=$$($(STACK_ENDPOINT) console 2>/dev/null); then \
	    echo "The local mesh already serves the console: $$url (CONSOLE_PORT=N make console starts another)"; \
	else exec $(EGRESSWATCH) console $(ew_source) --port $(or $(CONSOLE_PORT),20001); fi

suggest: $(READY) ## ServiceEntry YAML for every host seen through PassthroughCluster (make suggest > se.yaml)
	@$(EGRESSWATCH) suggest $(ew_counts)

LOCKDOWN_CHECK = $(EGRESSWATCH) lockdown-check $(ew_counts)

lockdown-check: $(READY) ## exit 0 if REGISTRY_ONLY would have broken nothing seen, 1 if it would, 2 if unknown
	@$(LOCKDOWN_CHECK)

# make exits 2 whenever a recipe fails, so the recipe above cannot hand on the check's 1 ("would
# break"). When lockdown-check is make's only goal (and not -n), the check runs while make reads this
# file instead: its output is printed, 1 turns on make's question mode (make then exits 1 and runs
# nothing), 2 stops make with exit 2, and 0 leaves the recipe above nothing to do.
ifeq ($(MAKECMDGOALS)$(findstring n,$(firstword -$(MAKEFLAGS)))$(wildcard $(READY)),lockdown-check$(READY))
LOCKDOWN_TEXT := $(shell mktemp)
LOCKDOWN_EXIT := $(shell $(LOCKDOWN_CHECK) > $(LOCKDOWN_TEXT); echo $$?)
LOCKDOWN_STDOUT := $(file <$(LOCKDOWN_TEXT))
$(shell rm -f $(LOCKDOWN_TEXT))
$(if $(LOCKDOWN_STDOUT),$(info $(LOCKDOWN_STDOUT)))
ifeq ($(LOCKDOWN_EXIT),1)
MAKEFLAGS += -q
else ifneq ($(LOCKDOWN_EXIT),0)
$(error lockdown-check could not tell (exit $(LOCKDOWN_EXIT)); see above)
endif
lockdown-check: LOCKDOWN_CHECK = :
endif
