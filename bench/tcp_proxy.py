"""Reference floor for bench/stream_relay.py: a byte-pumping TCP proxy (uvloop when installed).

It understands nothing (no HTTP, no rewriting), so it shows what the extra hop alone costs on this
machine: the best any HTTP-level proxy could do.

    python bench/tcp_proxy.py --port 9200 --upstream 9100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int, upstream: int) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        engine_reader, engine_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pump(client_reader, engine_writer), pump(engine_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port, args.upstream))
    except ImportError:
        asyncio.run(serve(args.port, args.upstream))
