"""The kernel's page cache as seen from user space: which files hold a model's weights, whether a range of them is
cached, how much of a file is cached (mincore), dropping them (posix_fadvise DONTNEED: no root needed).

The warmer (`memory/warming.py`) asks `chunk_cached`: reads of a few pages with RWF_NOWAIT, which fail with EAGAIN
where a page is not cached. It never uses mincore: since Linux 5.0 mincore reports every page of a file the caller
may not write as cached (a side-channel fix, mm/mincore.c can_do_mincore), which is every weight file the router's
user reads, and systemd's @system-service filter kills a process that calls it (SIGSYS). `resident_bytes`
(mincore) serves the benchmark and the tests, which run as root."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import re
from pathlib import Path

# What an engine reads from a model directory: safetensors (vLLM, SGLang, EXL2/EXL3), PyTorch bins, GGUF.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
# A split GGUF: model-00001-of-00003.gguf; llama.cpp is given the first part and opens the others.
_SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def weight_files(path: Path) -> list[Path]:
    """The files an engine reads for weights at `path`: the file itself (with the other parts of a split GGUF), or
    a directory's weight files, in name order. Missing paths give []."""
    if path.is_dir():
        found = {f for pattern in WEIGHT_PATTERNS for f in path.rglob(pattern) if f.is_file()}
        return sorted(found)
    if not path.is_file():
        return []
    split = _SPLIT_GGUF.match(path.name)
    if split is None:
        return [path]
    count = int(split["count"])
    parts = [path.with_name(f"{split['stem']}-{n:05d}-of-{count:05d}.gguf") for n in range(1, count + 1)]
    return [part for part in parts if part.is_file()]


def resident_pages(path: Path) -> bytes:
    """One byte per page of the file: 1 where the page is in the page cache, else 0 (mincore(2))."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            return b""
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
        if address in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (size + PAGE - 1) // PAGE
            vector = ctypes.create_string_buffer(pages)
            if _libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return vector.raw[:pages].translate(_LOW_BIT)  # the other bits are reserved
        finally:
            _libc.munmap(address, size)


_LOW_BIT = bytes(b & 1 for b in range(256))


def resident_bytes(path: Path) -> int:
    """How many bytes of the file are in the page cache now."""
    return min(resident_pages(path).count(1) * PAGE, path.stat().st_size)


def chunk_cached(fd: int, offset: int, length: int, probe: bytearray) -> bool | None:
    """Whether the range looks cached: its first, middle and last pages can be read without waiting for the disk
    (preadv2 RWF_NOWAIT). None where the file system cannot say (EOPNOTSUPP: no RWF_NOWAIT for buffered reads, e.g.
    overlay or network file systems). A miss may start the kernel's readahead of that spot, so callers probe only
    where they could read. `probe` is a page-sized buffer."""
    for at in (offset, offset + length // 2, offset + length - 1):
        try:
            os.preadv(fd, [probe], at - at % PAGE, os.RWF_NOWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
    return True


def drop(path: Path) -> None:
    """Ask the kernel to drop the file's clean pages from the page cache (what a cold start finds)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages would stay
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
