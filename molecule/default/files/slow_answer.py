"""A client that holds a long streamed answer open until told to finish it (Molecule side effect).

It reads the first chunk, then stops reading until the file `release` exists, so the answer is still
in progress at the router (its small receive window stalls the relay) while the role re-converges and
reloads the router. Then it reads the rest and prints a JSON summary: the answer must arrive whole.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time


def main(host: str, port: int, key: str, model: str, release: str) -> int:
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 900,
        "logprobs": True,
        "top_logprobs": 300,  # ~20 KB a chunk: the answer (~19 MB) outgrows every socket buffer on its way
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }
    conn = http.client.HTTPConnection(host, port, timeout=900)
    conn.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    conn.sock.settimeout(900)
    conn.sock.connect((host, port))
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    first = response.readline()
    delay = 0.05
    while not os.path.exists(release):  # waits for an event (the file), with backoff
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    chunks, finish, done = 0, None, False
    for raw in [first, *iter(response.readline, b"")]:
        line = raw.decode().strip()
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    chunks += 1
                finish = choice.get("finish_reason") or finish
    print(json.dumps({"status": response.status, "content_chunks": chunks, "finish_reason": finish, "done": done}))
    return 0 if response.status == 200 and done and finish else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))
