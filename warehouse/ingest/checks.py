"""Record-level validation shared by every reader. Each check raises `BadRecord(reason)`; the
emitter turns that into a `rejects` row, so a reader never decides how a failure is stored."""
from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from pathlib import Path

from PIL import Image

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold


class BadRecord(ValueError):
    """One input record cannot be accepted; str(e) is the reason stored in `rejects`."""


def resolve_under(root: Path, relative: str) -> Path:
    """The file `relative` names inside `root`; absolute paths and `..` escapes are rejected so
    an annotation file cannot make the pipeline read outside the data it was given."""
    if not isinstance(relative, str) or not relative.strip():
        raise BadRecord("missing image path")
    if os.path.isabs(relative) or relative.startswith("~"):
        raise BadRecord(f"image path escapes the data root (absolute path): {relative}")
    root = root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise BadRecord(f"image path escapes the data root: {relative}")
    return path


def inspect_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int, str]:
    """(width, height, sha256) of an image file that fully decodes; BadRecord otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadRecord("missing image file") from None
    except IsADirectoryError:
        raise BadRecord("image path is a directory") from None
    except OSError as e:
        raise BadRecord(f"unreadable image file: {e.strerror or e}") from None
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
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise BadRecord(f"box is not four numbers: {box!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise BadRecord(f"box has non-finite coordinates: {box!r}")
    if x2 <= x1 or y2 <= y1:
        raise BadRecord(f"box has zero area: {box!r}")
    return x1, y1, x2, y2


def xywh_to_xyxy(box) -> list[float]:
    """COCO and Visual Genome give [x, y, w, h]; the warehouse stores [x1, y1, x2, y2]."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise BadRecord(f"box is not four numbers: {box!r}") from None
    return [x, y, x + w, y + h]
