"""The running configuration: the config and the client keys read from it, replaced whole on a reload.

Everything that serves requests (the entry point, the proxy, the routes) reads `LiveConfig.current`; a reload
builds a new `Live` (file read and validated, keys read) and swaps it in with one assignment, so a request sees
one config or the other, never a mix.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from router_app.config import Config, ConfigError, RouterSettings, keys_in_file, read_keys, read_secret


class Keys:
    """Client keys (any of them opens /v1) and the admin key (load/unload; also a client key)."""

    def __init__(self, config: Config) -> None:
        settings = config.router
        try:
            self.client = read_keys(settings.api_key_files)
            self.admin = read_secret(settings.admin_key_file)
            # Each client key's label for the console: its file's name and its line among the file's keys.
            self._labels = {
                key: f"{path.name}#{number}"
                for path in settings.api_key_files
                for number, key in enumerate(keys_in_file(path), start=1)
            }
        except OSError as exc:
            raise ConfigError("router.api_key_files/admin_key_file", [f"cannot read key file: {exc}"]) from None
        if settings.admin_key_file is not None and not self.admin:
            raise ConfigError(str(settings.admin_key_file), ["router.admin_key_file: the file holds no key"])

    def client_ok(self, presented: str | None) -> bool:
        if not self.client:
            return True
        return presented is not None and (
            any(same_key(presented, key) for key in self.client)
            or (self.admin is not None and same_key(presented, self.admin))
        )

    def label(self, presented: str | None) -> str:
        """Who a key is, never the key: `admin`, `<file>#<n>` for a client key, `-` without keys or key."""
        if presented is None:
            return "-"
        if self.admin is not None and same_key(presented, self.admin):
            return "admin"
        for key, label in self._labels.items():
            if same_key(presented, key):
                return label
        return "-"

    def admin_ok(self, presented: str | None) -> bool:
        return self.admin is not None and presented is not None and same_key(presented, self.admin)


def same_key(presented: str, key: str) -> bool:
    """Whether a presented key is `key`, in constant time, whatever its bytes.

    The presented key is a header value, which the ASGI server hands over as latin-1 text: encoding it back gives
    the bytes the client sent, which a key file's UTF-8 key must equal. `secrets.compare_digest` refuses `str` with
    non-ASCII characters (TypeError: a 500 for anyone who sends one), so both sides are compared as bytes."""
    try:
        sent = presented.encode("latin-1")
    except UnicodeEncodeError:  # not from a header: compare its UTF-8
        sent = presented.encode("utf-8", "surrogatepass")
    return secrets.compare_digest(sent, key.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Live:
    """One configuration as served: never edited, only replaced."""

    config: Config
    keys: Keys

    @property
    def settings(self) -> RouterSettings:
        return self.config.router


class LiveConfig:
    """The one reference to the configuration in use, shared by everything that serves requests."""

    def __init__(self, live: Live) -> None:
        self.current = live

    def swap(self, live: Live) -> None:
        """Serve `live` from now on (one assignment: atomic on the event loop)."""
        self.current = live
