"""Input pickles load as data only: anything that would look up a class or call a function is
refused before it runs, and broken files are a clear error."""
import builtins
import os
import pickle

import pytest

from warehouse.ingest.safe_pickle import load_plain_pickle
from warehouse.ingest.sources import InputError

REFS = [{"ref_id": 1, "ann_id": 10, "image_id": 5, "split": "testA", "category_id": 1,
         "file_name": "COCO_train2014_000000000005_10.jpg", "box": (1.5, 2.0, 3.0, 4.0),
         "sentences": [{"sent": "man on the left", "raw": "Man on the left!", "sent_id": 7,
                        "tokens": ["man", "on", "the", "left"]}],
         "flags": [True, False], "none": None, "big": 2 ** 70, "score": -0.25}]


class _MakeDir:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


class _Eval:
    def __reduce__(self):
        return builtins.eval, ("1 + 1",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_plain_pickles_load(tmp_path, protocol):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(REFS, protocol=protocol))
    assert load_plain_pickle(path) == REFS


def test_bytes_load_from_protocol_3_on(tmp_path):
    # protocols 0-2 write bytes as a call of _codecs.encode: refused like any other call
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps({"blob": b"\x00\xff"}, protocol=3))
    assert load_plain_pickle(path) == {"blob": b"\x00\xff"}


def test_python2_str_loads_as_latin1_text(tmp_path):
    # what Python 2's pickle.dumps({"sent": "caf\xc3\xa9"}, 0) writes: str values as raw bytes
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"(dp0\nS'sent'\np1\nS'caf\\xc3\\xa9'\np2\ns.")
    assert load_plain_pickle(path) == {"sent": "caf\xc3\xa9"}


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1}, _MakeDir(str(marker))], protocol=protocol))
    with pytest.raises(InputError, match=r"refs\(unc\)\.p is refused: the pickle calls "
                                         r"posix\.mkdir; only plain containers and scalars"):
        load_plain_pickle(path)
    assert not marker.exists()


def test_eval_and_plain_classes_are_refused(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(_Eval(), protocol=4))
    with pytest.raises(InputError, match=r"calls builtins\.eval"):
        load_plain_pickle(path)
    path.write_bytes(pickle.dumps(_Eval(), protocol=2))  # named the Python 2 way
    with pytest.raises(InputError, match=r"calls __builtin__\.eval"):
        load_plain_pickle(path)
    path.write_bytes(pickle.dumps(_MakeDir("x"), protocol=0).replace(b"posix\nmkdir",
                                                                     b"posix\nsystem"))
    with pytest.raises(InputError, match=r"calls posix\.system"):
        load_plain_pickle(path)
    # even a harmless standard class needs a lookup, so it is refused as well
    path.write_bytes(pickle.dumps(range(3), protocol=4))
    with pytest.raises(InputError, match=r"calls builtins\.range"):
        load_plain_pickle(path)


def test_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"(lp0\nPsome-object\np1\na.")  # protocol 0 PERSID
    with pytest.raises(InputError, match="is refused: the pickle names the persistent object"):
        load_plain_pickle(path)


@pytest.mark.parametrize("content", [pickle.dumps(REFS, protocol=4)[:-40], b"",
                                     b"not a pickle at all", b"\x80\x05\x95garbage"])
def test_truncated_or_garbage_is_a_clear_error(tmp_path, content):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"refs\(unc\)\.p is unreadable: not a complete pickle"):
        load_plain_pickle(path)


def test_size_cap_and_missing_file(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(REFS))
    with pytest.raises(InputError, match="larger than 100 bytes"):
        load_plain_pickle(path, max_bytes=100)
    with pytest.raises(InputError, match="input file not found"):
        load_plain_pickle(tmp_path / "refs(google).p")
