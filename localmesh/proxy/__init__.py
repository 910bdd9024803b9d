"""The Python data plane: asyncio + httptools proxies that ask their route table and move bytes,
with Istio's metrics, peer metadata, access log and an admin port."""
