"""Mapping a memory-mapped cache's pages into this process's page tables ahead of use: a random
training sample touches a page of each of ~10 arrays, and on a large cache each touch is a page
fault (~5 us in a VM), which at 1M images is most of a batch's time."""
from __future__ import annotations

import ctypes
import mmap
import threading
from pathlib import Path

import numpy as np

MADV_POPULATE_READ = 22   # Linux 5.14+: map the pages readable, no copy-on-write break
FIT = 0.5                 # prefault only a cache that fits in this share of available memory


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where there is none: nothing is prefaulted)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def prefault(arrays: list[np.ndarray], background: bool = True) -> threading.Thread | None:
    """Populate the page tables of `arrays` (views of file maps) when their bytes fit in FIT of
    the available memory (a larger cache would be read from disk and evict itself), in a
    background thread by default, so the first batch does not wait. Only a hint: a kernel
    without MADV_POPULATE_READ ignores it. Returns the thread, or None when nothing is done."""
    arrays = [a for a in arrays if a.nbytes]
    if not arrays or sum(a.nbytes for a in arrays) > FIT * available_bytes():
        return None

    def run():
        libc = ctypes.CDLL(None, use_errno=True)
        for a in arrays:
            start = a.ctypes.data
            aligned = start - start % mmap.PAGESIZE   # madvise wants a page-aligned start
            libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(a.nbytes + start - aligned),
                         MADV_POPULATE_READ)
    if not background:
        run()
        return None
    thread = threading.Thread(target=run, name="mvp-prefault", daemon=True)
    thread.start()
    return thread
