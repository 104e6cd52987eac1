"""One chat turn through Open-WebUI as its browser sends it (socket.io session, built-in tools on).

Runs with the Open-WebUI venv's python (python-socketio and requests are its dependencies), not under pytest:

    echo '{"url": ..., "token": ..., "model": ..., "turns": [...], "chat_id": null}' | python owui_chat.py

`turns` is the conversation so far as stored messages ({"id", "role", "content"}), ending with the new user
message. Prints one JSON object: chat_id, the assistant message id, its stored record, and the socket events seen.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

import requests
import socketio


def chat_turn(url: str, token: str, model: str, turns: list[dict], chat_id: str | None, timeout: float) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    events: list[dict] = []
    sio = socketio.Client(reconnection=False)
    sio.on("events", lambda data: events.append(data))
    sio.connect(url, socketio_path="/ws/socket.io", transports=["websocket"], auth={"token": token}, wait_timeout=30)
    try:
        sio.emit("user-join", {"auth": {"token": token}})
        user = turns[-1]
        previous = turns[-2]["id"] if len(turns) > 1 else None
        assistant_id = str(uuid.uuid4())
        body = {
            "model": model,
            "stream": True,
            "messages": [{"role": m["role"], "content": m["content"]} for m in turns],
            "params": {},
            "features": {},
            "variables": {},
            "session_id": sio.get_sid("/"),
            "id": assistant_id,
            "parent_id": previous,
            "user_message": {
                "id": user["id"],
                "parentId": previous,
                "childrenIds": [assistant_id],
                "role": "user",
                "content": user["content"],
                "models": [model],
                "timestamp": int(time.time()),
            },
            "background_tasks": {"title_generation": False, "tags_generation": False, "follow_up_generation": False},
        }
        if chat_id:
            body["chat_id"] = chat_id
        reply = requests.post(f"{url}/api/chat/completions", json=body, headers=headers, timeout=60)
        reply.raise_for_status()
        chat_id = reply.json().get("chat_id") or chat_id
        deadline = time.monotonic() + timeout
        delay = 0.05
        message: dict = {}
        while time.monotonic() < deadline:
            chat = requests.get(f"{url}/api/v1/chats/{chat_id}", headers=headers, timeout=30).json()
            message = chat.get("chat", {}).get("history", {}).get("messages", {}).get(assistant_id, {})
            if message.get("done") or message.get("error"):
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        return {"chat_id": chat_id, "id": assistant_id, "message": message, "events": events}
    finally:
        sio.disconnect()


def main() -> None:
    args = json.load(sys.stdin)
    result = chat_turn(
        args["url"], args["token"], args["model"], args["turns"], args.get("chat_id"), args.get("timeout", 120)
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
