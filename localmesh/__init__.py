"""The mesh on one machine: Istio's ingress gateway and idgen's sidecar, driven by manifests/."""
