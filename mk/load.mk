# Load tests (Locust, loadtest/locustfile.py) and benchmarks (bench/). Included by the top Makefile after
# BIN and READY are defined.
#
# make load / load-ui drive a RUNNING stack: `make up` first (they never start or stop one; they find its
# site and gateway in its state, moved ports included), or point LOCUST_HOST (the site) and GATEWAY_URL
# (the ingress gateway) at a cluster. When the egress option
# in force is blackhole, say so with EXPECT_EGRESS=blocked: blocked calls then count as expected.
# Locust's own LOCUST_* variables work as usual; the ones below get defaults here.
LOCUST_USERS ?= 20
LOCUST_SPAWN_RATE ?= 5
LOCUST_RUN_TIME ?= 30s
LOCUST_WEB_PORT ?= 8089
LOAD_OUT ?= $(EGRESS_LAB_OUT)/load
EXPECT_EGRESS ?= allowed
export EXPECT_EGRESS
# LOCUST_HOST and GATEWAY_URL when given, else the running stack's site and gateway (else the
# locustfile's defaults, and its message when nothing answers there).
LOCUST := LOCUST_HOST="$${LOCUST_HOST:-$$($(STACK_ENDPOINT) site 2>/dev/null)}" \
    GATEWAY_URL="$${GATEWAY_URL:-$$($(STACK_ENDPOINT) gateway 2>/dev/null)}" $(BIN)/locust -f loadtest/locustfile.py
# Extra flags for the benchmarks, e.g. BENCH_PROXY_ARGS="--seconds 5 --profile" or "--no-record".
BENCH_PROXY_ARGS ?=
BENCH_CHAIN_ARGS ?=
BENCH_STARTUP_ARGS ?=
# e.g. BENCH_SOAK_ARGS="--seconds 120 --users 10" or "--no-record"
BENCH_SOAK_ARGS ?=

.PHONY: load load-ui bench bench-proxy bench-chain bench-startup bench-profile bench-soak

load: $(READY) ## bounded headless Locust run on the running stack ($LOCUST_USERS, $LOCUST_RUN_TIME); out/load*
	@mkdir -p $(dir $(LOAD_OUT))
	@$(LOCUST) --headless --users $(LOCUST_USERS) --spawn-rate $(LOCUST_SPAWN_RATE) \
	    --run-time $(LOCUST_RUN_TIME) --csv $(LOAD_OUT) --html $(LOAD_OUT).html --only-summary

load-ui: $(READY) ## Locust's web UI on http://127.0.0.1:$LOCUST_WEB_PORT (Ctrl-C stops it)
	@$(LOCUST) --web-host 127.0.0.1 --web-port $(LOCUST_WEB_PORT) --users $(LOCUST_USERS) \
	    --spawn-rate $(LOCUST_SPAWN_RATE)

bench: bench-proxy bench-chain bench-startup ## all three benchmarks (a few minutes); figures in bench/RESULTS.md

bench-proxy: $(READY) ## proxy overhead, local proxies and Envoy side by side: req/s, p99, CPU, memory; verdicts vs Envoy
	$(BIN)/python -m bench.proxy_overhead $(BENCH_PROXY_ARGS)

bench-chain: $(READY) ## recipe creations/s and p50/p99 through the whole chain, per egress option
	$(BIN)/python -m bench.chain $(BENCH_CHAIN_ARGS)

bench-startup: $(READY) ## make demo wall time, each data plane's start, localmesh apply propagation time
	$(BIN)/python -m bench.startup $(BENCH_STARTUP_ARGS)

bench-soak: $(READY) ## kill -9 of each component under Locust load: recipes created/lost/duplicated, proxy RSS
	$(BIN)/python -m bench.soak $(BENCH_SOAK_ARGS)

bench-profile: $(READY) ## bench-proxy plus py-spy profiles of both proxies (out/profile-*.txt)
	$(BIN)/python -m bench.proxy_overhead --profile $(BENCH_PROXY_ARGS)
