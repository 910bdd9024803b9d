# The cluster path (docs/cluster.md): kind + Istio + the Prometheus and Kiali addons, driven by scripts/.
# Included by the Makefile after READY is defined; `make demo-<option> TARGET=cluster` runs
# cluster-demo-<option>, `make demo TARGET=cluster` runs cluster-demo. Settings come from the environment
# (CLUSTER_NAME, KUBE_CONTEXT, GATEWAY_PORT, IMAGE, DRY_RUN, ...: each script's --help lists its own).

include $(dir $(lastword $(MAKEFILE_LIST)))options.mk
CLUSTER_OPTIONS := $(OPTIONS)
CLUSTER_DEMOS := $(addprefix cluster-demo-,$(CLUSTER_OPTIONS))

.PHONY: cluster-kind cluster-up cluster-deploy cluster-demo cluster-frontend cluster-frontend-deploy \
        cluster-cleanup cluster-down $(CLUSTER_DEMOS)

cluster-kind: ## only create (or reuse) the kind cluster, gateway node port published on the host
	scripts/kind-up.sh

cluster-up: ## Istio (demo profile), Prometheus + Kiali addons, alert rules on KUBE_CONTEXT (unset: a new kind cluster)
	scripts/cluster-up.sh

cluster-deploy: ## build idgen's image, tag it by content, load it into kind (or push it: IMAGE=), deploy manifests/base
	scripts/cluster-deploy.sh

# The three steps in one recipe, so they run in order even under `make -j` (separate targets would not).
cluster-demo: $(READY) ## the three egress steps in order on the cluster (DRY_RUN=1: print their commands, run none)
	for option in $(CLUSTER_OPTIONS); do scripts/cluster-demo.sh "$$option" || exit; done

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
