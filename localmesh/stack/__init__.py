"""The local stack: topology, the plan of processes, their supervision, config pushes to the
running proxies, and the driver tests and benchmarks start stacks with."""
