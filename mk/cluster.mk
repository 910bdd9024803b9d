# The cluster path (docs/cluster.md): kind + Istio + the Prometheus and Kiali addons, driven by scripts/.
# Included by the Makefile after READY is defined; `make demo-<option> TARGET=cluster` runs
# cluster-demo-<option>. Settings come from the environment (CLUSTER_NAME, KUBE_CONTEXT, GATEWAY_PORT, ...:
# each script's --help lists its own).

CLUSTER_OPTIONS := passthrough blackhole serviceentry
CLUSTER_DEMOS := $(addprefix cluster-demo-,$(CLUSTER_OPTIONS))

.PHONY: cluster-up cluster-deploy cluster-frontend cluster-frontend-deploy cluster-cleanup cluster-down \
        $(CLUSTER_DEMOS)

cluster-up: ## kind cluster, Istio (demo profile), Prometheus + Kiali addons, egress alert rules
	scripts/cluster-up.sh

cluster-deploy: ## build idgen's image, load it into kind, deploy manifests/base
	scripts/cluster-deploy.sh

# One demo step on the cluster: switch the option, wait, drive traffic, report, verdict (exit 1 on FAIL).
$(CLUSTER_DEMOS): cluster-demo-%: $(READY)
	scripts/cluster-demo.sh $*

cluster-frontend: $(READY) ## the recipe site on this machine, calling idgen through the cluster's gateway
	scripts/frontend-local.sh

cluster-frontend-deploy: ## the recipe site as a Cloud Function (needs IDGEN_URL=http://<gateway>/id)
	scripts/frontend-deploy-gcf.sh

cluster-cleanup: ## remove the lab from the cluster (the cluster and Istio stay)
	scripts/cleanup.sh

cluster-down: ## delete the kind cluster
	scripts/cluster-down.sh
