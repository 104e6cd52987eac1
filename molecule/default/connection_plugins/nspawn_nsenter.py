"""Run tasks inside a systemd-nspawn container by entering its namespaces with nsenter.

Molecule test helper: this host has no systemd of its own (so no machinectl), community.general's
chroot connection does not see the container's systemd, and the only nsenter plugin ships in the
large `ansible` package. `ansible_host` is the container's PID 1 as seen from the host.
"""

from __future__ import annotations

DOCUMENTATION = """
name: nspawn_nsenter
short_description: Enter a systemd-nspawn container's namespaces with nsenter
description:
  - Runs commands with C(nsenter --target PID --all) and transfers files through the same route.
author: llm-router developers
options:
  remote_addr:
    description: PID of the container's init (systemd) as seen from the host.
    vars:
      - name: inventory_hostname
      - name: ansible_host
"""

import shlex
import subprocess
from typing import ClassVar

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.connection import ConnectionBase


class Connection(ConnectionBase):
    transport = "nspawn_nsenter"
    has_pipelining = True

    def _nsenter(self) -> list[str]:
        pid = str(self.get_option("remote_addr"))
        if not pid.isdigit():
            raise AnsibleConnectionFailure(f"ansible_host must be the container's PID 1, got {pid!r}")
        return ["nsenter", "--target", pid, "--all", "--"]

    # A clean environment: the controller's (PIP_*, proxies, CA paths) must not leak into the host under test.
    _ENV: ClassVar[dict[str, str]] = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }

    def _connect(self) -> Connection:
        self._connected = True
        return self

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        argv = [*self._nsenter(), "/bin/sh", "-c", cmd]
        self._display.vvv(f"EXEC {shlex.join(argv)}", host=self.get_option("remote_addr"))
        proc = subprocess.run(argv, input=in_data, capture_output=True, check=False, env=self._ENV)
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        with open(to_bytes(in_path), "rb") as source:
            proc = subprocess.run(
                [*self._nsenter(), "/bin/sh", "-c", f"cat > {shlex.quote(out_path)}"],
                stdin=source,
                capture_output=True,
                check=False,
            )
        if proc.returncode != 0:
            raise AnsibleError(f"failed to put {in_path} to {out_path}: {proc.stderr.decode(errors='replace')}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        with open(to_bytes(out_path), "wb") as target:
            proc = subprocess.run(
                [*self._nsenter(), "cat", in_path], stdout=target, stderr=subprocess.PIPE, check=False
            )
        if proc.returncode != 0:
            raise AnsibleError(f"failed to fetch {in_path}: {proc.stderr.decode(errors='replace')}")

    def close(self) -> None:
        self._connected = False
