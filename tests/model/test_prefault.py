"""prefault maps a file's pages into this process without copying them, and leaves a cache
larger than memory alone."""
import re
from pathlib import Path

import numpy as np

from model.training import prefault as prefault_module
from model.training.prefault import prefault

SIZE = 8 << 20


def _mapping(path: Path) -> dict[str, int]:
    """Rss and Anonymous (kB) of this process's map of `path`, from /proc/self/smaps."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith(str(path)))
    fields = {}
    for line in lines[at + 1:]:
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):   # the next mapping's header
            break
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0])
    return fields


def test_pages_are_mapped_readable_not_copied(tmp_path):
    path = tmp_path / "a.bin"
    np.arange(SIZE // 4, dtype=np.int32).tofile(path)
    arr = np.asarray(np.memmap(path, np.int32, "c", shape=(SIZE // 4,)))
    before = _mapping(path)
    assert before["Rss"] < SIZE // 1024 // 2           # nothing touched yet
    assert prefault([arr], background=False) is None
    after = _mapping(path)
    assert after["Rss"] >= SIZE // 1024                # every page mapped
    assert after["Anonymous"] == 0                     # and none copied
    assert np.array_equal(arr[::4096], np.arange(0, SIZE // 4, 4096))


def test_a_cache_larger_than_memory_is_left_alone(tmp_path, monkeypatch):
    path = tmp_path / "b.bin"
    np.zeros(SIZE // 4, np.int32).tofile(path)
    arr = np.asarray(np.memmap(path, np.int32, "c", shape=(SIZE // 4,)))
    monkeypatch.setattr(prefault_module, "available_bytes", lambda: SIZE)   # FIT of it: too small
    assert prefault([arr]) is None
    assert _mapping(path)["Rss"] < SIZE // 1024 // 2
