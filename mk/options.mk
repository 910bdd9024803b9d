# The egress options in the workshop's order: the folders of manifests/overlays/, numbered by the first
# line of each kustomization.yaml ("# Option <number>, <name>: ..."); tests/localmesh/test_layers.py
# checks this line against them. Spelled out because make also runs from a copy of Makefile and mk/
# alone. Included by the Makefile and by mk/cluster.mk (which also runs on its own).
OPTIONS := passthrough blackhole serviceentry
