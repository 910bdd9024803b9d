"""Benchmarks of the egress lab; each prints its figures and their ratio to a baseline measured in the
same run, and records them in bench/RESULTS.md. Run them with `make bench` (see mk/load.mk)."""
