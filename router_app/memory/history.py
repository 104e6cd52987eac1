"""What the router learned about each model, kept across restarts: load times (and the revision they were made
with), footprints, and which engine process it put to sleep.

One JSON file in `router.state_dir` (`models.json`), rewritten atomically after each change.
Footprints are keyed by what shapes them (`memory.footprint_key`), so a changed command or
context length starts from a fresh estimate instead of a stale measurement.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEEP_LOAD_TIMES = 7
RECORDS_SLEEP = "records_sleep"


def _optional(kind: type, value: Any) -> Any:
    return None if value is None else kind(value)


@dataclass
class ModelHistory:
    load_times: list[float] = field(default_factory=list)
    footprint_key: str = ""
    footprint: dict[str, int] = field(default_factory=dict)  # bytes per device, measured when ready
    sleep_footprint: dict[str, int] = field(default_factory=dict)
    loaded_revision: str | None = None  # `revision` of the model at its last successful load
    asleep_pid: int | None = None  # the engine process the router put to sleep (or is putting to sleep)
    asleep_fingerprint: str | None = None  # its wake-integrity probe answer then (engines/instance.py)

    def median_load_s(self) -> float | None:
        return statistics.median(self.load_times) if self.load_times else None


@dataclass(frozen=True)
class SleepRecord:
    """What the router recorded about putting a model's engine to sleep: the engine's PID (None: not asleep), its
    wake-integrity fingerprint then, and whether "no PID" can be trusted to mean awake (`known`)."""

    pid: int | None
    fingerprint: str | None = None
    known: bool = True


class History:
    """Per-model history; persisted when `directory` is set."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / "models.json" if directory else None
        self.models: dict[str, ModelHistory] = {}
        # Whether sleeps are recorded across restarts: persisted, by a router that records them (RECORDS_SLEEP in
        # the file; an older router's file lacks it, so an engine it put to sleep would read as awake).
        self.records_sleep = self.path is not None
        if self.path is not None and self.path.exists():
            try:
                data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
                self.records_sleep = bool(data.get(RECORDS_SLEEP))
                for model_id, entry in data.get("models", {}).items():
                    self.models[model_id] = ModelHistory(
                        load_times=[float(t) for t in entry.get("load_times", [])][-KEEP_LOAD_TIMES:],
                        footprint_key=str(entry.get("footprint_key", "")),
                        footprint={str(k): int(v) for k, v in entry.get("footprint", {}).items()},
                        sleep_footprint={str(k): int(v) for k, v in entry.get("sleep_footprint", {}).items()},
                        loaded_revision=_optional(str, entry.get("loaded_revision")),
                        asleep_pid=_optional(int, entry.get("asleep_pid")),
                        asleep_fingerprint=_optional(str, entry.get("asleep_fingerprint")),
                    )
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("ignoring unreadable history %s: %s", self.path, exc)

    def get(self, model_id: str) -> ModelHistory:
        return self.models.setdefault(model_id, ModelHistory())

    def record_load(self, model_id: str, seconds: float, revision: str | None = None) -> None:
        entry = self.get(model_id)
        entry.load_times = [*entry.load_times, round(seconds, 3)][-KEEP_LOAD_TIMES:]
        entry.loaded_revision = revision
        self.save()

    def loaded_before(self, model_id: str, revision: str | None) -> bool:
        """Whether the model has loaded as configured now (same revision): later loads find caches warm."""
        entry = self.models.get(model_id)
        return bool(entry and entry.load_times and entry.loaded_revision == revision)

    def record_asleep(self, model_id: str, pid: int | None, fingerprint: str | None = None) -> None:
        """The engine process put to sleep (recorded before the sleep request), None once awake or stopped."""
        entry = self.get(model_id)
        if (entry.asleep_pid, entry.asleep_fingerprint) != (pid, fingerprint):
            entry.asleep_pid, entry.asleep_fingerprint = pid, fingerprint
            self.save()

    def sleep_record(self, model_id: str) -> SleepRecord:
        entry = self.models.get(model_id) or ModelHistory()
        return SleepRecord(entry.asleep_pid, entry.asleep_fingerprint, self.records_sleep)

    def footprint(self, model_id: str, key: str) -> dict[str, int]:
        entry = self.models.get(model_id)
        return dict(entry.footprint) if entry and entry.footprint_key == key else {}

    def record_footprint(self, model_id: str, key: str, usage: dict[str, int], asleep: bool = False) -> None:
        entry = self.get(model_id)
        if entry.footprint_key != key:
            entry.footprint_key, entry.footprint, entry.sleep_footprint = key, {}, {}
        (entry.sleep_footprint if asleep else entry.footprint).update(usage)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "models": {
                model_id: {
                    "load_times": entry.load_times,
                    "footprint_key": entry.footprint_key,
                    "footprint": entry.footprint,
                    "sleep_footprint": entry.sleep_footprint,
                    "loaded_revision": entry.loaded_revision,
                    "asleep_pid": entry.asleep_pid,
                    "asleep_fingerprint": entry.asleep_fingerprint,
                }
                for model_id, entry in self.models.items()
            },
            RECORDS_SLEEP: True,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".models.", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
