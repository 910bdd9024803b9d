"""A trivial, fast HTTP/1.1 server for the proxy benchmark: the proxy, not the app, must be measured.

    python -m bench.fastupstream --port 18999

Answers every request with the same small JSON body (httpbin's /uuid shape, 53 bytes), keep-alive,
pipelining in order. uvloop + httptools, like the proxies, so it is never the slowest hop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import httptools
import uvloop

BODY = b'{\n  "uuid": "6f6c1ad2-1b63-4b7e-9d0f-7f2a0c7f1e55"\n}\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
)
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)


class FastHTTP(asyncio.Protocol):
    """One connection: answer each complete request at once with the canned response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        if self.parser.should_keep_alive():
            self.transport.write(RESPONSE)
        else:
            self.transport.write(CLOSE_RESPONSE)
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(FastHTTP, host, port, reuse_address=True, backlog=1024)
    print(f"fastupstream: listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fastupstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
