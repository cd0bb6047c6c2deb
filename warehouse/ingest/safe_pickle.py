"""Loading a pickle that holds data only. Unpickling runs whatever callable the file names, so an
input pickle is read with every class lookup refused: plain containers and scalars (dict, list,
tuple, str, int, float, bool, None; bytes from protocol 3 on, sets from 4) have opcodes of their
own and need none; anything else (an object, a function to call) stops the load before it
runs."""
from __future__ import annotations

import io
import os
import pickle
import stat
from pathlib import Path

from warehouse.ingest.checks import shown
from warehouse.ingest.sources import InputError

MAX_PICKLE_BYTES = 2 << 30  # refs(unc).p is ~30 MB; a file past this is never read


class _Refused(Exception):
    """What the file asked for: the global or persistent id named in the refusal."""


class _PlainUnpickler(pickle.Unpickler):
    # EXT1/2/4 opcodes also resolve through find_class (copyreg's extension registry is empty
    # unless the process registers extensions, which this project never does)
    def find_class(self, module, name):
        raise _Refused(f"calls {module}.{name}")

    def persistent_load(self, pid):
        raise _Refused(f"names the persistent object {shown(pid)}")


def load_plain_pickle(path: Path, max_bytes: int = MAX_PICKLE_BYTES):
    """The containers and scalars pickled in `path`, or InputError naming the file. Python 2
    pickles' `str` values load as latin-1 text (every byte maps to one character)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"input file {path} is unreadable: not a regular file")
        if st.st_size > max_bytes:
            raise InputError(f"input file {path} is larger than {max_bytes} bytes")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except OSError as e:
        raise InputError(f"input file {path} is unreadable: {e.strerror or e}") from None
    if len(data) > max_bytes:  # it grew after the stat
        raise InputError(f"input file {path} is larger than {max_bytes} bytes")
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as e:
        raise InputError(f"{path.name} is refused: the pickle {e}; only plain containers and "
                         "scalars are accepted") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError, RecursionError) as e:
        # truncated, garbage, or a pickle whose opcodes do not fit together
        raise InputError(f"input file {path} is unreadable: not a complete pickle "
                         f"({type(e).__name__}: {shown(str(e))})") from None
