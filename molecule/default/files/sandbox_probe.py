"""What a GPU engine needs from llm-model@.service's sandbox, checked from inside it (Molecule verify).

verify.yml replaces only the ExecStart= of a rendered model unit instance with `sandbox_probe.py unit ...`, so the
probe runs with every other property of the template: the engine user, the EnvironmentFile, the hardening.

  majors N            the next N character majors the kernel would hand a driver that asks for a dynamic one
                      (register_chrdev(0, ...): fs/char_dev.c find_dynamic_major, 254 down to 234, then 511 down
                      to 384), as nvidia-uvm and nvidia-caps get theirs; printed as JSON
  devices NODE...     open each NODE (PATH:r or PATH:rw); exit 1 if any is refused (the control, outside the unit)
  unit [options] NODE...  the devices, then the engine's PATH, /dev/shm, RLIMIT_MEMLOCK and HOME; always exits 0,
                      since the unit's Restart=on-failure would run a failing probe again: the verdict is the
                      last line, `sandbox-probe RESULT pass` or `sandbox-probe RESULT fail`

A device node with no driver behind its major opens with ENXIO (or ENODEV): the open reached the kernel's
character-device lookup, so the unit let it through. EPERM is the cgroup device policy (DevicePolicy=,
DeviceAllow=, PrivateDevices=, or ProtectClock= on systemd < 252), ENOENT a /dev without the node
(PrivateDevices=), EACCES the node's own mode.
"""

from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import pwd
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile

PREFIX = "sandbox-probe"
REACHED = {errno.ENXIO: "ENXIO", errno.ENODEV: "ENODEV"}
REFUSED = {
    errno.EPERM: "EPERM: the unit's device policy refuses it",
    errno.EACCES: "EACCES: the node's mode refuses this user",
    errno.ENOENT: "ENOENT: the node is not in this /dev (PrivateDevices=?)",
}
# NCCL's SHM transport: mkstemp("/dev/shm/nccl-XXXXXX"), fallocate, mmap(MAP_SHARED), and the peer rank opens the
# same path (NCCL 2.30.7 src/os/linux.cc:772-808). Its buffers are a few MiB per channel.
SHM_BYTES = 8 * 1024 * 1024


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def line(self, ok: bool | None, what: str) -> None:
        verdict = "" if ok is None else ("PASS " if ok else "FAIL ")
        self.failed += ok is False
        print(f"{PREFIX} {verdict}{what}", flush=True)


def dynamic_majors(count: int, proc_devices: str = "/proc/devices") -> list[int]:
    taken: set[int] = set()
    with open(proc_devices) as f:
        section = ""
        for raw in f:
            line = raw.strip()
            if line.endswith(":"):
                section = line
            elif line and section == "Character devices:":
                taken.add(int(line.split()[0]))
    candidates = [*range(254, 233, -1), *range(511, 383, -1)]
    return [major for major in candidates if major not in taken][:count]


def check_devices(report: Report, nodes: list[str]) -> None:
    for spec in nodes:
        path, _, access = spec.rpartition(":")
        flags = os.O_RDWR if access == "rw" else os.O_RDONLY
        try:
            st = os.stat(path)
            kind = f"c {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISCHR(st.st_mode) else "not a char dev"
        except OSError as e:
            kind = errno.errorcode.get(e.errno, str(e.errno))
        try:
            os.close(os.open(path, flags | os.O_CLOEXEC))
            report.line(True, f"device {path} ({kind}) {access}: opened")
        except OSError as e:
            if e.errno in REACHED:
                report.line(
                    True, f"device {path} ({kind}) {access}: {REACHED[e.errno]} (reached the kernel, no driver)"
                )
            else:
                why = REFUSED.get(e.errno, errno.errorcode.get(e.errno, str(e.errno)))
                report.line(False, f"device {path} ({kind}) {access}: {why}")


def engine_venv_bin(start_script: str) -> str:
    """The bin/ of the interpreter the engine runs with: the start script's `exec <venv>/bin/<program>`."""
    with open(start_script) as f:
        match = re.search(r"^exec (\S+)/bin/\S+", f.read(), re.MULTILINE)
    if not match:
        raise ValueError(f"{start_script}: no `exec <venv>/bin/...` line")
    return f"{match.group(1)}/bin"


def check_path(report: Report, start_script: str) -> None:
    """Each tool by name on the unit's PATH, as FlashInfer's JIT runs `ninja` (flashinfer 0.7.2 jit/cpp_ext.py:419)
    and finds nvcc through CUDA_HOME, else PATH (jit/cpp_ext.py:48-62)."""
    venv_bin = engine_venv_bin(start_script)
    expected = {"ninja": f"{venv_bin}/ninja", "python": f"{venv_bin}/python", "python3": f"{venv_bin}/python3"}
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home:
        expected["nvcc"] = f"{cuda_home}/bin/nvcc"
    else:
        report.line(None, "path nvcc: no CUDA_HOME in the unit's environment, not checked")
    for tool, want in expected.items():
        found = shutil.which(tool)
        if found != want:
            report.line(False, f"path {tool} -> {found} (expected {want}; PATH={os.environ.get('PATH')})")
            continue
        run = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
        report.line(run.returncode == 0, f"path {tool} -> {found} (runs: rc {run.returncode})")


def check_shm(report: Report) -> None:
    try:
        fd, path = tempfile.mkstemp(prefix="nccl-", dir="/dev/shm")
        try:
            os.posix_fallocate(fd, 0, SHM_BYTES)
            with mmap.mmap(fd, SHM_BYTES, mmap.MAP_SHARED) as mine:
                mine[-8:] = b"rank0ok!"
            peer = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                with mmap.mmap(peer, SHM_BYTES, mmap.MAP_SHARED) as theirs:
                    seen = theirs[-8:]
            finally:
                os.close(peer)
        finally:
            os.close(fd)
            os.unlink(path)
        free = shutil.disk_usage("/dev/shm").free
        report.line(seen == b"rank0ok!", f"/dev/shm: {SHM_BYTES >> 20} MiB file shared by path ({free >> 20} MiB free)")
    except OSError as e:
        report.line(False, f"/dev/shm: {e}")


def check_memlock(report: Report, expected: str) -> None:
    """RLIMIT_MEMLOCK as the service manager gives every service (the template sets no LimitMEMLOCK=).

    Nothing the role runs on one host is bounded by it: NCCL 2.30.7 calls neither mlock nor setrlimit(RLIMIT_MEMLOCK)
    (its only getrlimit/setrlimit are RLIMIT_STACK/RLIMIT_NOFILE, src/os/linux.cc:129-163), and the host buffers of
    CUDA, NCCL's SHM transport and the engines (cudaHostAlloc, cudaHostRegister: linux.cc:829) are pinned by the
    NVIDIA driver with pin_user_pages, which is not charged to it (open-gpu-kernel-modules os-mlock.c
    os_lock_user_pages). Only RDMA (ibv_reg_mr, NCCL's IB/RoCE transport between hosts) is; the role deploys no
    multi-host engines. So the probe asserts the unit keeps the manager's default: a LimitMEMLOCK= in the template
    must come with a reason, and an update here.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    want_soft, want_hard = (int(v) if v != "infinity" else resource.RLIM_INFINITY for v in expected.split(":"))
    report.line(
        (soft, hard) == (want_soft, want_hard),
        f"RLIMIT_MEMLOCK soft={soft} hard={hard} (the manager's DefaultLimitMEMLOCK: {want_soft}:{want_hard})",
    )


def check_home(report: Report) -> None:
    """HOME takes the JIT and download caches: ~/.triton, ~/.cache/flashinfer, ~/.cache/vllm, ~/.nv/ComputeCache."""
    home = os.environ.get("HOME", "")
    try:
        with tempfile.NamedTemporaryFile(dir=home, prefix=".sandbox-probe-") as f:
            f.write(b"x")
            f.flush()
        report.line(True, f"HOME {home} writable")
    except OSError as e:
        report.line(False, f"HOME {home!r} not writable: {e}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("majors").add_argument("count", type=int)
    sub.add_parser("devices").add_argument("nodes", nargs="+")
    unit = sub.add_parser("unit")
    unit.add_argument("--user", required=True)
    unit.add_argument("--start-script", required=True)
    unit.add_argument("--memlock", required=True, help="SOFT:HARD, bytes or infinity")
    unit.add_argument("nodes", nargs="+")
    args = parser.parse_args(argv)

    if args.command == "majors":
        print(json.dumps(dynamic_majors(args.count)))
        return 0
    report = Report()
    if args.command == "devices":
        check_devices(report, args.nodes)
        return 1 if report.failed else 0

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
        report.line(user == args.user, f"user {user} (uid {os.getuid()}, groups {sorted(os.getgroups())})")
        check_devices(report, args.nodes)
        check_path(report, args.start_script)
        check_shm(report)
        check_memlock(report, args.memlock)
        check_home(report)
    except Exception as e:  # reported as the verdict: a non-zero exit would restart the unit
        report.line(False, f"probe crashed: {e!r}")
    report.line(None, f"RESULT {'fail' if report.failed else 'pass'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
