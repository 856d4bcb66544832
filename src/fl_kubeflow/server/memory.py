"""Process memory of the server: freed models go back to the OS, and its peak is measured.

glibc's malloc serves a large allocation with mmap, and returns it to the OS on
free, only above a threshold that it raises, by itself, to the size of the
largest block freed so far (up to 32 MiB). After the first model-sized tensor is
freed, later ones come from the heap, whose freed memory glibc keeps: the server's
resident memory then grows with the traffic, not with what it holds. Fixing the
threshold at 1 MiB keeps every tensor, update body and model message on mmap.
numpy still asks for huge pages on these, so the fresh pages cost little.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource

log = logging.getLogger("fl_kubeflow.server")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 1 << 20


def release_large_allocations() -> bool:
    """Fix glibc's mmap threshold at 1 MiB; False where there is no glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; allocator left as it is")
    return ok


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM, else ru_maxrss.

    Not ru_maxrss first: Linux carries it across fork and exec, so a server started by
    a large process (a benchmark, a notebook) would report that process's peak.
    VmHWM belongs to the address space that exec made.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
