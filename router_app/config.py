"""The router's configuration file: one YAML document, validated with pydantic.

The schema is a contract with the Ansible role that renders it (see docs/config.md).
Unknown keys are errors, and every error names the file, the key path and what is allowed.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path("/etc/llm-router/config.yml")


class ConfigError(Exception):
    """A configuration problem, phrased for the person editing the file."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {self.path}:\n{lines}")


class Backend(StrEnum):
    LLAMACPP = "llamacpp"
    SGLANG = "sglang"
    TABBYAPI = "tabbyapi"
    VLLM = "vllm"
    OPENAI = "openai"


class StatusStyle(StrEnum):
    OPENWEBUI = "openwebui"
    REASONING = "reasoning"
    CONTENT = "content"
    NONE = "none"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveSeconds = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(value: Any) -> int:
    """Bytes from 8589934592, "8GiB", "8 GB", "512MiB" (binary and decimal units)."""
    if isinstance(value, bool):
        raise ValueError("a size such as 24GiB or 512MiB")
    if isinstance(value, int | float):
        return int(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size such as 24GiB, 512MiB or 8GB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


ByteSize = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


class MemorySettings(Strict):
    """How the router learns what fits (the `router.memory:` section)."""

    # auto: NVML when it finds GPUs, else the declared devices, else one model per group at a time.
    source: Literal["auto", "nvml", "declared", "off"] = "auto"
    # Declared capacities by device name: GPU indices ("0", "1") override NVML; other names (e.g. "cpu")
    # are budgets for hosts without GPUs, measured against the engines' resident memory (RSS).
    devices: dict[str, ByteSize] = Field(default_factory=dict)
    # Kept free on every device (CUDA contexts, fragmentation, other processes).
    reserve: ByteSize = 0
    # Before starting a model, wait at most this long for the memory its victims held to be free.
    free_wait_s: Annotated[float, Field(ge=0)] = 30.0


class PeerConfig(Strict):
    """Another llm-router whose models this one lists and forwards to (the `router.peers:` entries)."""

    # Shown in /health and in each of its models' `peer` field.
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    # The peer router's root (without /v1), e.g. http://10.0.0.2:8002.
    url: str
    # A client key of the peer (the role's shared fleet key).
    api_key_file: Path | None = None
    # Connecting, and listing its models, give up after this long (the peer then counts as unreachable).
    timeout_s: PositiveSeconds = 3.0

    @field_validator("url")
    @classmethod
    def _root_url(cls, url: str) -> str:
        if not re.fullmatch(r"https?://[^/\s]+/?", url):
            raise ValueError(f"{url!r} is not a router root such as http://10.0.0.2:8002 (scheme, host, port; no path)")
        return url.rstrip("/")


class RouterSettings(Strict):
    """Settings of the router process itself (the `router:` section)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8002
    load_timeout_s: PositiveSeconds = 900
    # A model's first load (none recorded for its revision in state_dir) compiles and downloads what later loads
    # find cached: JIT kernels, torch.compile, CUDA graphs, Hugging Face files. It gets this long instead.
    first_load_timeout_s: PositiveSeconds = 3600
    drain_timeout_s: PositiveSeconds = 300
    stop_timeout_s: PositiveSeconds = 30
    status_style: StatusStyle = StatusStyle.OPENWEBUI
    progress_interval_s: Annotated[float, Field(gt=0, le=5)] = 2.0
    metrics_footer: bool = True
    supervisor: Literal["process", "systemd"] = "process"
    systemctl: list[str] = Field(default_factory=lambda: ["systemctl"], min_length=1)
    api_key_files: list[Path] = Field(default_factory=list)
    admin_key_file: Path | None = None
    # Without client keys, only requests whose Host is one of these (or a loopback name) are served: a web page
    # cannot reach the router through DNS rebinding. "*": any host.
    allowed_hosts: list[str] = Field(default_factory=list)
    log_lines: Annotated[int, Field(ge=1, le=10000)] = 200
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    memory: MemorySettings = Field(default_factory=MemorySettings)
    # A resident model that others wait for keeps serving new requests at most this long (counted from
    # the oldest waiter's arrival, or from when the resident became ready if later); then it drains.
    fairness_s: Annotated[float, Field(ge=0)] = 10.0
    # Unload a model after this long without requests (from the end of its last one); null: never.
    idle_ttl_s: PositiveSeconds | None = None
    # Load times and learned footprints survive restarts here (null: kept in memory only).
    state_dir: Path | None = None
    # On SIGTERM the router stops accepting and lets the answers in flight finish for at most this long, then
    # cuts the rest (the role's unit waits this long plus a margin before it kills the router).
    shutdown_grace_s: PositiveSeconds = 120
    # Largest request body accepted (413 above it, before the rest is read); vision requests carry base64 images.
    max_request_size: Annotated[int, BeforeValidator(parse_size), Field(ge=1024)] = 100 * 1024**2
    # Who may call POST /models/load and /models/unload (llama.cpp router-mode API, Open-WebUI's load and
    # eject buttons): `clients` = any client key (no more than a request for a model can do already; pinned
    # models only with the admin key), `admin` = the admin key only, `none` = nobody (403).
    model_control: Literal["admin", "clients", "none"] = "clients"
    # Other routers (a fleet): their models are listed beside this one's and requests for them are forwarded.
    peers: list[PeerConfig] = Field(default_factory=list)
    # A peer's model list is re-read when older than this (listing, and a request for a name not known yet).
    peer_refresh_s: Annotated[float, Field(ge=0)] = 2.0
    # KV continuity (llama.cpp models with a slot directory, `slot_dir`): disk kept for saved slots over every
    # model's directory, least recently used files deleted first (0: none kept); how long a save before an eviction
    # and a restore after a load may take (each gives up after this and the switch goes on without it).
    kv_budget: ByteSize = 16 * 1024**3
    # Slots holding fewer tokens are not saved: prefilling them again costs less than a save and a restore.
    kv_min_tokens: Annotated[int, Field(ge=1)] = 256
    kv_save_timeout_s: PositiveSeconds = 30
    kv_restore_timeout_s: PositiveSeconds = 30
    # Page-cache warming: RAM within which the weight files of recently used models are kept in the page cache, and
    # a newcomer's files are read while its victims drain. `auto`: half of the memory available at start; 0: off.
    page_cache_budget: Literal["auto"] | ByteSize = "auto"

    @field_validator("peers")
    @classmethod
    def _unique_peers(cls, peers: list[PeerConfig]) -> list[PeerConfig]:
        names = [peer.name for peer in peers]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"peer name {name!r} is used twice; give each peer its own name")
        return peers


DEFAULT_HEALTH_PATH = {
    Backend.LLAMACPP: "/health",
    Backend.SGLANG: "/health",
    Backend.TABBYAPI: "/health",
    Backend.VLLM: "/health",
    Backend.OPENAI: "/models",
}


# Keys that carry the request itself: per-model defaults/overrides/strip may not touch them.
RESERVED_REQUEST_KEYS = frozenset({"model", "stream", "messages", "prompt", "input", "system"})


def slot_slug(model_id: str) -> str:
    """A model id as one path component (ids may hold '/', e.g. Qwen/Qwen2.5-7B)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_id).lstrip(".") or "model"


class ModelConfig(Strict):
    """One servable model (an entry of `models:`)."""

    id: Annotated[str, Field(min_length=1, max_length=200)]
    aliases: list[str] = Field(default_factory=list)
    backend: Backend
    description: str = ""
    served_name: str | None = None
    host: str = "127.0.0.1"
    port: Port | None = None
    url: str | None = None
    health_path: str | None = None
    # Exclusive group: at most one model of a group is resident. Without memory information every
    # model is in group "default" (one at a time).
    group: str | None = None
    evict: Literal["stop", "sleep"] = "stop"
    unit: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    workdir: Path | None = None
    api_key_file: Path | None = None
    api_tokens_file: Path | None = None
    load_timeout_s: PositiveSeconds | None = None
    first_load_timeout_s: PositiveSeconds | None = None
    tabby_model_name: str | None = None
    # Placement and lifecycle.
    devices: list[str] | None = None  # devices it occupies (GPU indices or declared names); default: all
    memory: ByteSize | None = None  # footprint per device when resident; default: learned, else estimated
    sleep_memory: ByteSize | None = None  # footprint per device while asleep (evict: sleep)
    weights: Path | None = None  # model file or directory, for the estimate before the first load
    context_length: Annotated[int, Field(gt=0)] | None = None
    parallel: Annotated[int, Field(gt=0)] | None = None
    mem_fraction: Annotated[float, Field(gt=0, le=1)] | None = None  # engine's own memory fraction flag
    # Opaque to the router: a changed value makes a config reload drain and restart the model. The role puts a
    # hash of the engine's rendered files (start script, environment, engine config, engine build) here.
    revision: str | None = None
    pinned: bool = False  # never evicted, never unloaded by TTL
    preload: bool = False  # loaded when the router starts
    ttl_s: PositiveSeconds | None = None  # idle unload; overrides router.idle_ttl_s
    # When every client waiting for a load left: cancel it, or finish it. Default: cancel for
    # engines that stop, finish for engines that sleep.
    on_abandon: Literal["cancel", "finish"] | None = None
    # llama.cpp: the directory the engine saves slots to (its --slot-save-path). Set, the router saves the engine's
    # slots there before evicting it and restores them after its next load (KV continuity). Process supervisor:
    # `${SLOT_DIR}` in the command is this directory, or state_dir/slots/<id> when it is unset.
    slot_dir: Path | None = None
    # Page-cache warming of this model's weight files (`weights`, else the command's model path); off by itself for
    # llama.cpp's `--load-mode dio`, which reads past the page cache.
    page_cache: bool = True
    # Request parameters for generation routes (chat, completions, responses, messages, infill), by top-level
    # key: `defaults` are set when the client did not send the key, `overrides` always, `strip` keys are removed.
    defaults: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)
    strip: list[str] = Field(default_factory=list)

    @field_validator("id", "aliases")
    @classmethod
    def _no_whitespace(cls, value: Any) -> Any:
        names = value if isinstance(value, list) else [value]
        for name in names:
            if not name.strip() or any(ch.isspace() for ch in name):
                raise ValueError(f"model names may not contain whitespace: {name!r}")
        return value

    @field_validator("defaults", "overrides", "strip")
    @classmethod
    def _request_keys(cls, value: Any) -> Any:
        for key in value:
            if key in RESERVED_REQUEST_KEYS:
                raise ValueError(f"{key!r} is the request itself, not a parameter; it cannot be set or removed here")
        return value

    @field_validator("health_path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/', e.g. /health")
        return value

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelConfig:
        if self.backend is Backend.OPENAI:
            if not self.url:
                raise ValueError("backend 'openai' needs 'url' (the remote base URL, e.g. https://host/v1)")
            for key in ("command", "unit", "port"):
                if getattr(self, key) is not None:
                    raise ValueError(f"backend 'openai' is a remote endpoint: remove '{key}'")
            if self.evict == "sleep":
                raise ValueError("backend 'openai' has no lifecycle: 'evict' must be 'stop'")
        elif self.url is not None:
            raise ValueError(f"'url' is only for backend 'openai'; {self.backend} uses host/port")
        if self.evict == "sleep" and self.backend is Backend.LLAMACPP:
            raise ValueError("llama.cpp has no sleep endpoint: use evict 'stop'")
        clash = sorted((set(self.defaults) | set(self.overrides)) & set(self.strip))
        if clash:
            raise ValueError(f"keys both set and stripped: {', '.join(clash)}")
        if self.api_tokens_file is not None and self.backend is not Backend.TABBYAPI:
            raise ValueError("'api_tokens_file' is TabbyAPI's api_tokens.yml; other backends use 'api_key_file'")
        if self.backend is Backend.TABBYAPI and self.evict == "sleep" and not self.api_tokens_file:
            raise ValueError("tabbyapi with evict 'sleep' unloads via its admin API: set 'api_tokens_file'")
        if self.slot_dir is not None and self.backend is not Backend.LLAMACPP:
            raise ValueError(
                "'slot_dir' is llama-server's --slot-save-path (KV continuity); remove it for this backend"
            )
        return self

    @property
    def cancel_abandoned(self) -> bool:
        if self.on_abandon is not None:
            return self.on_abandon == "cancel"
        return self.evict == "stop"

    @property
    def engine_name(self) -> str:
        """The name the engine knows this model by."""
        return self.served_name or self.id

    @property
    def local(self) -> bool:
        """True for engines this router starts and stops."""
        return self.backend is not Backend.OPENAI

    def slot_directory(self, state_dir: Path | None) -> Path | None:
        """Where the engine saves its slots (KV continuity), or None when it does not: `slot_dir`, the directory
        `${SLOT_DIR}` stands for, or a literal `--slot-save-path` of the command."""
        if self.slot_dir is not None:
            return self.slot_dir
        command = self.command or []
        if self.uses("SLOT_DIR"):
            return None if state_dir is None else state_dir / "slots" / slot_slug(self.id)
        if "--slot-save-path" in command[:-1]:
            path = command[command.index("--slot-save-path") + 1]
            return None if "${" in path else Path(path)
        return None

    def uses(self, macro: str) -> bool:
        """Whether the command holds the macro `${<macro>}` (PORT, SOCKET, SLOT_DIR…)."""
        return any("${" + macro + "}" in arg for arg in self.command or [])

    @property
    def on_socket(self) -> bool:
        """The engine listens on a Unix socket the router picks (`${SOCKET}` in its command), not on a port."""
        return self.uses("SOCKET")

    @property
    def effective_health_path(self) -> str:
        return self.health_path or DEFAULT_HEALTH_PATH[self.backend]


class Config(Strict):
    """The whole file."""

    router: RouterSettings = Field(default_factory=RouterSettings)
    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names: dict[str, str] = {}
        for model in self.models:
            for name in [model.id, *model.aliases]:
                if name in names:
                    raise ValueError(f"name {name!r} of model {model.id!r} is already used by model {names[name]!r}")
                names[name] = model.id
        ports: dict[tuple[str, int], str] = {}
        for model in self.models:
            if model.port is None:
                continue
            key = (model.host, model.port)
            if key in ports:
                raise ValueError(
                    f"models {ports[key]!r} and {model.id!r} both use {model.host}:{model.port}; give each its own port"
                )
            ports[key] = model.id
        for index, model in enumerate(self.models):
            if not model.local:
                continue
            where = f"models[{index}] (id {model.id!r})"
            uses_slot_dir = model.uses("SLOT_DIR")
            if uses_slot_dir and model.backend is not Backend.LLAMACPP:
                raise ValueError(f"{where}: ${{SLOT_DIR}} is for llama-server's --slot-save-path (backend llamacpp)")
            if uses_slot_dir and model.slot_directory(self.router.state_dir) is None:
                raise ValueError(
                    f"{where}: 'command' has ${{SLOT_DIR}}: set 'slot_dir', or router.state_dir (slots go to "
                    "state_dir/slots/<id>)"
                )
            if self.router.supervisor == "process":
                if not model.command:
                    raise ValueError(f"{where}: the process supervisor needs 'command' (argv list)")
                on_port = model.uses("PORT")
                if model.on_socket and (on_port or model.port is not None):
                    extra = "${PORT} from 'command'" if on_port else "'port'"
                    raise ValueError(
                        f"{where}: 'command' has ${{SOCKET}}, so the engine listens on a Unix socket: drop {extra}"
                    )
                if model.port is None and not on_port and not model.on_socket:
                    raise ValueError(
                        f"{where}: set 'port', or put ${{PORT}} in 'command' to get a free port "
                        "(or ${SOCKET} for a Unix socket: llama-server's --host ${SOCKET})"
                    )
            else:
                if model.command:
                    raise ValueError(f"{where}: 'command' is for the process supervisor; systemd starts 'unit'")
                if model.port is None:
                    raise ValueError(f"{where}: the systemd supervisor needs the engine's 'port'")
        return self

    def find(self, name: str) -> ModelConfig | None:
        """The model with this id or alias."""
        for model in self.models:
            if name == model.id or name in model.aliases:
                return model
        return None


def _format_location(data: Any, loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and "id" in node and parts and parts[-1] == "models":
                    label = f"[{item}] (id {node['id']!r})"
            else:
                node = None
            parts.append(label)
        else:
            node = node.get(item) if isinstance(node, dict) else None
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _explain(data: Any, error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    message = error["msg"]
    if kind == "extra_forbidden":
        message = "unknown key (check spelling; see docs/config.md for the allowed keys)"
    elif kind == "enum":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"got {error.get('input')!r}; allowed: {expected}"
    elif kind == "missing":
        message = "required key is missing"
    message = message.removeprefix("Value error, ")
    return f"{_format_location(data, loc)}: {message}"


def parse_config(data: Any, path: Path | str = "<config>") -> Config:
    """Validate already-parsed YAML data."""
    if not isinstance(data, dict):
        raise ConfigError(path, ["(top level): expected a mapping with 'router' and 'models'"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [_explain(data, err) for err in exc.errors()]) from None


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate the config file (default: $LLM_ROUTER_CONFIG or /etc/llm-router/config.yml)."""
    path = Path(path or os.environ.get("LLM_ROUTER_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read file: {exc.strerror}; pass --config PATH"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML: {exc}"]) from None
    return parse_config(data, path)


def read_keys(paths: list[Path]) -> set[str]:
    """API keys from files: one key per line, '#' comments and blank lines ignored."""
    return {key for path in paths for key in keys_in_file(path)}


def keys_in_file(path: Path) -> list[str]:
    """The keys of one key file in their order (the console labels a key by its file and its number there)."""
    keys: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in keys:
            keys.append(line)
    return keys


def read_secret(path: Path | None) -> str | None:
    """The first key in a key file, or None when no file is configured."""
    if path is None:
        return None
    keys = sorted(read_keys([path]))
    return keys[0] if keys else None
