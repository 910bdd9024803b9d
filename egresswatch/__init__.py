"""egresswatch: what does the mesh send out, and is it safe to lock it down?

Reads Istio's standard metrics from any Prometheus (the local mesh's or a cluster's) or straight from
the proxies' /stats/prometheus endpoints, and answers with an egress report, a Kiali-style service
graph, ServiceEntry suggestions and a REGISTRY_ONLY lock-down check. See `python -m egresswatch -h`.
"""

# No code here on purpose: under pytest's default import mode the test folder tests/egresswatch can
# turn this package into a namespace package, which keeps its modules but not this file's names.
