"""idgen: hands out recipe IDs, each a UUID fetched from an external API (httpbin.org/uuid).

It is the mesh workload whose egress the lab watches: every ID is one outbound call, and every way
that call can fail (blocked by the mesh, refused, timed out, garbled) becomes a distinct JSON error.
"""
