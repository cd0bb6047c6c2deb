"""Record-level validation shared by every reader, and every limit on one record's fields. A check
raises `BadRecord(reason)`, which the emitter stores as a `rejects` row: a value past its limit
costs its record, never the build."""
from __future__ import annotations

import hashlib
import io
import os
import reprlib
import stat
import warnings
from pathlib import Path

import pyarrow as pa
from PIL import Image

from warehouse.schemas import TABLES

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
IMAGE_BYTES_PER_PIXEL = 8        # an image file may hold its pixels as uncompressed 16-bit RGBA...
IMAGE_BYTES_SLACK = 64 << 20     # ...plus headers and metadata; larger files are never read
MAX_TEXT_CHARS = 10_000          # a caption, question or answer (COCO's longest caption: ~250)
MAX_NAME_CHARS = 200             # a label, attribute, relation predicate or split
MAX_PATH_CHARS = 4_096           # an image path (Linux PATH_MAX)
MAX_ID_CHARS = 1_000             # ids and source ids
MAX_COORDINATE = 1e9             # |box coordinate| in pixels: past any image, inside float32
MAX_LINE_BYTES = 16 << 20        # one line of a line-based input (JSON lines, TSV, CSV)

# column -> (what a reject reason calls it, most characters a value may have); any other text
# column is an id: (column name, MAX_ID_CHARS)
TEXT_COLUMNS = {
    "text": ("caption", MAX_TEXT_CHARS), "question": ("question", MAX_TEXT_CHARS),
    "answers": ("answer", MAX_TEXT_CHARS), "label": ("label", MAX_NAME_CHARS),
    "attributes": ("attribute", MAX_NAME_CHARS), "predicate": ("relation predicate",
                                                               MAX_NAME_CHARS),
    "hypothesis": ("hypothesis", MAX_TEXT_CHARS),
    "expression": ("referring expression", MAX_TEXT_CHARS),
    "split": ("split", MAX_NAME_CHARS), "path": ("image path", MAX_PATH_CHARS),
}

_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60


class BadRecord(ValueError):
    """One input record cannot be accepted; str(e) is the reason stored in `rejects`."""


def shown(value) -> str:
    """An input value as a reject reason quotes it: a repr cut in length and nesting depth."""
    return _SHOW.repr(value)


def check_string(value, what: str, limit: int) -> str:
    """A str of at most `limit` characters, without NUL, that encodes as UTF-8."""
    if not isinstance(value, str):
        raise BadRecord(f"{what} is not a string: {type(value).__name__}")
    if len(value) > limit:
        raise BadRecord(f"{what} longer than {limit} characters")
    if "\x00" in value:  # the OS refuses it in paths; in text it is never meant
        raise BadRecord(f"{what} contains NUL")
    try:
        value.encode("utf-8")  # lone surrogates, from JSON escapes or undecodable file names
    except UnicodeEncodeError:
        raise BadRecord(f"{what} is not valid UTF-8") from None
    return value


def _text_columns(table: str) -> list[tuple[str, str, int]]:
    """(column, what a reason calls it, limit) of each column of `table` that holds text."""
    return [(f.name, *TEXT_COLUMNS.get(f.name, (f.name.replace("_", " "), MAX_ID_CHARS)))
            for f in TABLES[table]
            if pa.types.is_string(f.type) or f.name in ("attributes", "answers")]


_TEXT_OF = {table: _text_columns(table) for table in TABLES}


def check_row(table: str, row: dict) -> None:
    """Every text value of a row about to be staged (see TEXT_COLUMNS), so that a wrong type or
    an oversized value rejects its record instead of failing the Arrow conversion."""
    for name, what, limit in _TEXT_OF[table]:
        value = row.get(name)
        if value is None:
            continue
        values = (value if name == "attributes" else
                  [a["answer"] for a in value] if name == "answers" else (value,))
        for v in values:
            check_string(v, what, limit)


def check_number(value, what: str = "box coordinate", limit: float = MAX_COORDINATE) -> float:
    """A JSON number (not a string, not a boolean) within +-limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRecord(f"{what} is not a number: {shown(value)}")
    if not -limit <= value <= limit:  # exact for huge ints (no float overflow); NaN fails too
        raise BadRecord(f"{what} is not finite or out of range: {shown(value)}")
    return float(value)


def resolve_under(root: Path, relative: str) -> Path:
    """The file `relative` names inside `root`; absolute paths and `..` escapes are rejected so
    an annotation file cannot make the pipeline read outside the data it was given."""
    if relative is None or isinstance(relative, str) and not relative.strip():
        raise BadRecord("missing image path")
    check_string(relative, "image path", MAX_PATH_CHARS)  # before the OS sees it
    if os.path.isabs(relative) or relative.startswith("~"):
        raise BadRecord(f"image path escapes the data root (absolute path): {relative}")
    root = root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise BadRecord(f"image path escapes the data root: {relative}")
    return path


def max_image_bytes(max_pixels: int) -> int:
    """The largest image file read, following the pixel limit (--max-image-pixels)."""
    return max_pixels * IMAGE_BYTES_PER_PIXEL + IMAGE_BYTES_SLACK


def _check_file(st: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise BadRecord("image path is a directory")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever, a device never end
        raise BadRecord("image path is not a regular file")
    if st.st_size > max_bytes:
        raise BadRecord(f"image file larger than {max_bytes} bytes")


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """The content of a regular file of at most `max_bytes`, checked before anything is read."""
    try:
        _check_file(os.stat(path), max_bytes)
        # O_NONBLOCK: a FIFO swapped in after the stat cannot block the open; fstat then
        # checks the file actually opened
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            _check_file(os.fstat(f.fileno()), max_bytes)
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise BadRecord("missing image file") from None
    except OSError as e:
        raise BadRecord(f"unreadable image file: {e.strerror or e}") from None
    if len(data) > max_bytes:  # it grew after the stat
        raise BadRecord(f"image file larger than {max_bytes} bytes")
    return data


def inspect_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int, str]:
    """(width, height, sha256) of an image file that fully decodes; BadRecord otherwise."""
    data = read_image_file(path, max_image_bytes(max_pixels))
    digest = hashlib.sha256(data).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise BadRecord("image too large (decompression bomb)") from None
        except Exception:
            raise BadRecord("not an image") from None
        width, height = img.size
        if width * height > max_pixels:  # checked before decoding: the bomb never inflates
            raise BadRecord(f"image too large: {width}x{height} pixels exceeds the limit of "
                            f"{max_pixels}")
        try:
            img.load()
        except Exception as e:  # Pillow raises OSError("image file is truncated ...") and others
            raise BadRecord(f"truncated or corrupt image: {e}") from None
    if width <= 0 or height <= 0:
        raise BadRecord("image has no pixels")
    return width, height, digest


def clean_text(text) -> str:
    """A caption or question as stored: stripped, non-empty, valid UTF-8."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord("text is not valid UTF-8") from None
    if not isinstance(text, str):
        raise BadRecord(f"text is not a string: {type(text).__name__}")
    try:
        text.encode("utf-8")  # lone surrogates from JSON escapes are not UTF-8
    except UnicodeEncodeError:
        raise BadRecord("text is not valid UTF-8") from None
    text = " ".join(text.split())
    if not text:
        raise BadRecord("empty caption or question text")
    return text


def check_box(box) -> tuple[float, float, float, float]:
    """A finite x1, y1, x2, y2 box with positive area. Whether it fits its image is checked
    when the warehouse merges the build, where every image's size is known."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise BadRecord(f"box is not four numbers: {shown(box)}")
    x1, y1, x2, y2 = (check_number(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise BadRecord(f"box has zero area: {shown(box)}")
    return x1, y1, x2, y2


def xywh_to_xyxy(box) -> list[float]:
    """COCO and Visual Genome give [x, y, w, h]; the warehouse stores [x1, y1, x2, y2]."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise BadRecord(f"box is not four numbers: {shown(box)}")
    x, y, w, h = (check_number(v) for v in box)
    return [x, y, x + w, y + h]
