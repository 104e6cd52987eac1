"""KV continuity for llama.cpp: an engine's slots saved before it is evicted, restored after its next load.

llama-server b11312 started with `--slot-save-path DIR` writes a slot's tokens and sequence state to DIR/<name>
(`POST /slots/{id}?action=save`, llama_state_seq_save_file) and reads them back into a slot (`action=restore`), so
the next turn of a long chat reuses its prefix instead of prefilling it again. A save holds neither the context
checkpoints (--ctx-checkpoints) nor the host-RAM prompt cache (--cache-ram); a busy slot is saved once idle
(tools/server/server-context.cpp:2526-2640).

Beside each saved file lies its manifest (`<name>.json`): the identity of the engine that wrote it (model, revision,
how it is launched, build, model file, context per slot, slot count) and what it holds. Only files of the engine's
own identity are restored; files of any other identity are deleted at its next load; a disk budget over every
model's directory deletes the least recently used first. Everything here fails open: the caller bounds it in time
and goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from router_app.config import ModelConfig

log = logging.getLogger(__name__)

# kv-<identity key>-s<slot>-<ns since epoch>.bin / .json
_NAME = re.compile(r"^kv-([0-9a-f]{16})-s(\d+)-(\d+)$")


@runtime_checkable
class SlotEngine(Protocol):
    """What KV continuity needs of an engine adapter (llama.cpp's)."""

    async def props(self) -> dict[str, Any]: ...

    async def slots(self) -> list[dict[str, Any]]: ...

    async def slot_action(self, slot: int, action: str, filename: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Saved:
    """One saved slot: its file (without extension), what it holds, and when it was written and last used."""

    name: str
    identity: str
    slot: int
    tokens: int
    bytes: int
    saved_at: float
    used_at: float


@dataclass(frozen=True)
class SlotReport:
    """One save or restore of an engine's slots."""

    action: str
    slots: int
    tokens: int
    bytes: int
    seconds: float
    at: float

    def summary(self) -> dict[str, float | int]:
        return {
            "slots": self.slots,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "ms": round(self.seconds * 1000, 1),
            "at": round(self.at, 3),
        }


def identity(model: ModelConfig, props: dict[str, Any]) -> dict[str, object]:
    """What must be equal for a saved slot to be restored: the same weights, launched the same way, by the same
    build, with the same context per slot and the same number of slots."""
    settings = props.get("default_generation_settings") or {}
    model_path = props.get("model_path")
    weights: list[int] | None = None
    if isinstance(model_path, str):
        with contextlib.suppress(OSError):  # the router may not be allowed to read the engine's model directory
            stat = os.stat(model_path)
            weights = [stat.st_size, stat.st_mtime_ns]
    return {
        "model": model.id,
        "revision": model.revision,
        "launch": [model.command, model.env, model.unit],
        "build": props.get("build_info"),
        "model_path": model_path,
        "weights": weights,
        "n_ctx": settings.get("n_ctx") if isinstance(settings, dict) else None,
        "slots": props.get("total_slots"),
    }


def identity_key(value: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SlotDir:
    """One model's slot directory: saved files and their manifests (file operations only, no engine)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> None:
        """Make the directory (0700) when the router owns it (process supervisor): the engine needs it to exist."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def new_name(self, key: str, slot: int) -> str:
        return f"kv-{key}-s{slot}-{time.time_ns()}"

    def saved(self) -> list[Saved]:
        """Every saved slot with a readable manifest and its file present."""
        found = []
        for manifest in self.path.glob("kv-*.json"):
            try:
                data = json.loads(manifest.read_text())
                saved = Saved(**data)
            except (OSError, ValueError, TypeError):
                continue
            if saved.name == manifest.stem and (self.path / f"{saved.name}.bin").exists():
                found.append(saved)
        return found

    def commit(self, saved: Saved) -> None:
        """Record a saved file (its manifest written last, atomically), then drop older saves of its slot."""
        target = self.path / f"{saved.name}.json"
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(saved)))
        temporary.replace(target)
        for other in self.saved():
            if other.identity == saved.identity and other.slot == saved.slot and other.name != saved.name:
                self.remove(other.name)

    def touch(self, saved: Saved) -> Saved:
        used = Saved(**{**asdict(saved), "used_at": time.time()})
        with contextlib.suppress(OSError):
            (self.path / f"{saved.name}.json").write_text(json.dumps(asdict(used)))
        return used

    def remove(self, name: str) -> None:
        for suffix in (".json", ".bin"):
            with contextlib.suppress(FileNotFoundError):
                (self.path / f"{name}{suffix}").unlink()

    def keep_only(self, key: str) -> dict[int, Saved]:
        """Delete saves of any other identity, and files of ours without a manifest (a save cut short); the newest
        save of each slot of `key`."""
        kept: dict[int, Saved] = {}
        manifests = {saved.name: saved for saved in self.saved()}
        for path in self.path.glob("kv-*"):
            match = _NAME.match(path.stem)
            if match is None:
                continue
            saved = manifests.get(path.stem)
            if saved is None or saved.identity != key:
                self.remove(path.stem)
            elif saved.slot not in kept or saved.saved_at > kept[saved.slot].saved_at:
                kept[saved.slot] = saved
        return kept


class SlotBudget:
    """The disk budget over every model's slot directory: least recently used saves are deleted first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._dirs: dict[Path, SlotDir] = {}

    def register(self, directory: SlotDir) -> SlotDir:
        return self._dirs.setdefault(directory.path, directory)

    def trim(self) -> list[Saved]:
        """Delete saves, least recently used first, until they fit the budget; returns those deleted."""
        everything = [(saved, directory) for directory in self._dirs.values() for saved in directory.saved()]
        total = sum(saved.bytes for saved, _ in everything)
        deleted = []
        for saved, directory in sorted(everything, key=lambda item: item[0].used_at):
            if total <= self.limit:
                break
            directory.remove(saved.name)
            total -= saved.bytes
            deleted.append(saved)
        return deleted


class SlotKeeper:
    """Saves an engine's slots before it stops and restores them after its next load (llama.cpp)."""

    def __init__(self, model: ModelConfig, directory: SlotDir, budget: SlotBudget, min_tokens: int = 1) -> None:
        self.model = model
        self.directory = budget.register(directory)
        self.budget = budget
        self.min_tokens = min_tokens

    async def prepare(self) -> None:
        await asyncio.to_thread(self.directory.prepare)

    async def save(self, engine: SlotEngine) -> SlotReport:
        """Save every slot that holds tokens. A slot the engine cannot save is skipped (logged)."""
        started = time.monotonic()
        props = await engine.props()
        key = identity_key(identity(self.model, props))
        slots = tokens = written = 0
        if self.budget.limit > 0:
            for slot in await self._worth_saving(engine, int(props.get("total_slots") or 1)):
                name = self.directory.new_name(key, slot)
                try:
                    answer = await engine.slot_action(slot, "save", f"{name}.bin")
                except Exception:
                    await asyncio.to_thread(self.directory.remove, name)
                    raise
                count, size = int(answer.get("n_saved") or 0), int(answer.get("n_written") or 0)
                if count < self.min_tokens:
                    await asyncio.to_thread(self.directory.remove, name)
                    continue
                now = time.time()
                await asyncio.to_thread(self.directory.commit, Saved(name, key, slot, count, size, now, now))
                slots, tokens, written = slots + 1, tokens + count, written + size
            for deleted in await asyncio.to_thread(self.budget.trim):
                log.info("KV budget: deleted a saved slot of %s tokens (%s)", deleted.tokens, deleted.name)
        return SlotReport("save", slots, tokens, written, time.monotonic() - started, time.time())

    async def _worth_saving(self, engine: SlotEngine, total: int) -> list[int]:
        """The slots holding at least min_tokens (GET /slots); every slot where the engine does not say."""
        try:
            slots = await engine.slots()
        except Exception:  # --no-slots: save them all, and drop the small ones afterwards
            return list(range(total))
        return [
            int(slot["id"])
            for slot in slots
            if isinstance(slot.get("id"), int) and int(slot.get("n_prompt_tokens") or 0) >= self.min_tokens
        ]

    async def restore(self, engine: SlotEngine) -> SlotReport:
        """Restore the newest save of each slot made by an engine of this identity; delete every other save."""
        started = time.monotonic()
        props = await engine.props()
        key = identity_key(identity(self.model, props))
        saved = await asyncio.to_thread(self.directory.keep_only, key)
        slots = tokens = read = 0
        for slot, item in sorted(saved.items()):
            try:
                answer = await engine.slot_action(slot, "restore", f"{item.name}.bin")
            except Exception:
                await asyncio.to_thread(self.directory.remove, item.name)  # it would fail again
                raise
            await asyncio.to_thread(self.directory.touch, item)
            slots, tokens, read = (
                slots + 1,
                tokens + int(answer.get("n_restored") or 0),
                read + int(answer.get("n_read") or 0),
            )
        return SlotReport("restore", slots, tokens, read, time.monotonic() - started, time.time())
