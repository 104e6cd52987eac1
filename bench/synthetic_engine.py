"""A synthetic OpenAI streaming engine for relay benchmarks (not a model).

It answers POST /v1/chat/completions with `max_tokens` SSE chunks written as fast as the client reads
them (pre-encoded bytes, asyncio streams, no framework), so that whatever sits between it and the
client is the bottleneck. GET /health and /v1/models answer 200. Run:

    python bench/synthetic_engine.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json

CHUNK = (
    b'data: {"id":"chatcmpl-synthetic","object":"chat.completion.chunk","created":0,"model":"synthetic",'
    b'"choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}\n\n'
)


def _usage(tokens: int) -> bytes:
    usage = {
        "id": "chatcmpl-synthetic",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "synthetic",
        "choices": [],
        "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
    }
    return b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET":
                payload = (
                    b'{"status":"ok"}'
                    if path == "/health"
                    else (b'{"object":"list","data":[{"id":"synthetic","object":"model"}]}')
                )
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(payload), payload)
                )
                await writer.drain()
                continue
            request = json.loads(body or b"{}")
            tokens = int(request.get("max_tokens") or 16)
            if not request.get("stream"):
                payload = json.dumps(
                    {
                        "id": "chatcmpl-synthetic",
                        "object": "chat.completion",
                        "model": "synthetic",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": " token" * tokens},
                                "finish_reason": "length",
                            }
                        ],
                        "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
                    }
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(payload), payload)
                )
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            batch = _chunked(CHUNK * 16)
            remaining = tokens
            while remaining >= 16:
                writer.write(batch)
                remaining -= 16
                await writer.drain()
            if remaining:
                writer.write(_chunked(CHUNK * remaining))
            tail = _usage(tokens) if (request.get("stream_options") or {}).get("include_usage") else b""
            writer.write(_chunked(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"synthetic engine on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))
