"""KV continuity's files: manifests, identities, the budget (the engine side runs in test_kv_continuity.py)."""

from __future__ import annotations

from pathlib import Path

from router_app.config import ModelConfig
from router_app.engines.slots import Saved, SlotBudget, SlotDir, identity, identity_key

PROPS = {"build_info": "b11312-0c1e570", "model_path": "/m.gguf", "default_generation_settings": {"n_ctx": 512}}


def save(directory: SlotDir, key: str, slot: int, size: int, used_at: float) -> Saved:
    name = directory.new_name(key, slot)
    (directory.path / f"{name}.bin").write_bytes(b"x" * size)
    saved = Saved(name, key, slot, tokens=size, bytes=size, saved_at=used_at, used_at=used_at)
    directory.commit(saved)
    return saved


def test_a_new_save_of_a_slot_replaces_the_older_one_and_only_that(tmp_path: Path) -> None:
    directory = SlotDir(tmp_path)
    old = save(directory, "a" * 16, 0, 10, 1.0)
    other_slot = save(directory, "a" * 16, 1, 10, 1.0)
    new = save(directory, "a" * 16, 0, 20, 2.0)
    assert {s.name for s in directory.saved()} == {other_slot.name, new.name}
    assert not (tmp_path / f"{old.name}.bin").exists()


def test_a_load_keeps_only_its_own_identity_and_drops_cut_short_saves(tmp_path: Path) -> None:
    directory = SlotDir(tmp_path)
    mine, theirs = "a" * 16, "b" * 16
    kept = save(directory, mine, 0, 10, 1.0)
    save(directory, theirs, 0, 10, 1.0)
    (tmp_path / f"{directory.new_name(mine, 1)}.bin").write_bytes(b"no manifest: the save was cut short")
    (tmp_path / "notes.txt").write_text("not ours")
    assert directory.keep_only(mine) == {0: kept}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{kept.name}.bin", f"{kept.name}.json", "notes.txt"])


def test_the_budget_deletes_least_recently_used_saves_across_models(tmp_path: Path) -> None:
    budget = SlotBudget(limit=25)
    a = budget.register(SlotDir(tmp_path / "a"))
    b = budget.register(SlotDir(tmp_path / "b"))
    for directory in (a, b):
        directory.prepare()
    oldest = save(a, "a" * 16, 0, 10, 1.0)
    used_lately = b.touch(save(b, "b" * 16, 0, 10, 0.5))
    newest = save(a, "a" * 16, 1, 10, 3.0)
    assert budget.trim() == [oldest]
    assert {s.name for s in a.saved() + b.saved()} == {used_lately.name, newest.name}
    budget.limit = 0
    assert len(budget.trim()) == 2 and not a.saved() and not b.saved()


def test_any_change_of_weights_launch_build_context_or_slots_changes_the_identity(tmp_path: Path) -> None:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"weights")
    model = ModelConfig(id="m", backend="llamacpp", command=["llama-server", "--host", "${SOCKET}"], revision="r1")
    props = {**PROPS, "model_path": str(weights), "total_slots": 1}
    key = identity_key(identity(model, props))
    assert key == identity_key(identity(model, dict(props)))
    changed = [
        identity(model.model_copy(update={"revision": "r2"}), props),
        identity(model.model_copy(update={"command": ["llama-server", "--host", "${SOCKET}", "-ctk", "q8_0"]}), props),
        identity(model, {**props, "build_info": "b11313"}),
        identity(model, {**props, "default_generation_settings": {"n_ctx": 1024}}),
        identity(model, {**props, "total_slots": 2}),
    ]
    weights.write_bytes(b"other weights")
    changed.append(identity(model, props))
    assert len({key, *(identity_key(c) for c in changed)}) == len(changed) + 1
