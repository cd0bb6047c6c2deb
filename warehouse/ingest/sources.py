"""The contract between the ingest pipeline and one reader per input format."""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

from warehouse.ingest.checks import MAX_LINE_BYTES
from warehouse.ingest.emitter import RAW_LIMIT, Emitter


class InputError(RuntimeError):
    """A whole input file cannot be read; nothing is written. The message names the file."""


@dataclass(frozen=True)
class Partition:
    """Part `index` (from 0) of `count`: the records one of several parallel builds of one input
    reads. Each is a build of its own (own fingerprint, staging, merge and commit)."""
    index: int
    count: int

    def __str__(self) -> str:
        return f"partition {self.index + 1} of {self.count}"

    def span(self, n: int) -> range:
        """Its contiguous share of n numbered items (e.g. generated scenes)."""
        return range(n * self.index // self.count, n * (self.index + 1) // self.count)

    def owns(self, number: int) -> bool:
        """Whether record `number` of a stream is its own: every count-th, so a stream splits
        evenly without being counted first."""
        return number % self.count == self.index


@dataclass
class SourceContext:
    dataset: str                  # the format's name, also the namespace of its image ids
    source: Path                  # file or folder the user pointed at
    split: str | None = None      # restrict to / label with this split, where the format has one
    image_root: Path | None = None
    n_images: int | None = None   # generators only
    seed: int = 0                 # generators only
    workers: int = 2
    partition: Partition | None = None  # None: the whole input

    def owns(self, number: int) -> bool:
        """Whether record `number` of a line-based input is this build's to read."""
        return self.partition is None or self.partition.owns(number)

    def images_root(self) -> Path:
        """Where relative image paths resolve: --image-root, else the source folder."""
        if self.image_root is not None:
            return self.image_root
        return self.source if self.source.is_dir() else self.source.parent


class Reader(Protocol):
    def inputs(self, ctx: SourceContext) -> list[Path]:
        """Annotation files whose content defines this build (hashed into its manifest)."""

    def read(self, ctx: SourceContext, emit: Emitter) -> None:
        """Emit every record of the input (accepted or rejected) through `emit`."""

    # Optional: `partitions(ctx, n) -> list[SourceContext]`, the contexts of n builds that
    # together read the input once (see `partition`); readers without it refuse n > 1.


READERS: dict[str, str] = {
    "coco": "warehouse.ingest.readers.coco",
    "karpathy": "warehouse.ingest.readers.karpathy",
    "vqa": "warehouse.ingest.readers.vqa",
    "vg": "warehouse.ingest.readers.visual_genome",
    "tsv": "warehouse.ingest.readers.caption_table",
    "folder": "warehouse.ingest.readers.folder",
    "vinvl-predictions": "warehouse.ingest.readers.vinvl_predictions",
    "easy-vqa": "warehouse.ingest.readers.easy_vqa",
    "snli-ve": "warehouse.ingest.readers.snli_ve",
    # the refer toolkit's three data sets, one reader: the name namespaces their ids
    "refcoco": "warehouse.ingest.readers.refcoco",
    "refcoco+": "warehouse.ingest.readers.refcoco",
    "refcocog": "warehouse.ingest.readers.refcoco",
    "shapes": "warehouse.ingest.readers.shapes",
}


def reader_for(dataset: str) -> Reader:
    if dataset not in READERS:
        raise InputError(f"unknown dataset format {dataset!r}; one of: {', '.join(READERS)}")
    return importlib.import_module(READERS[dataset])


def partition(ctx: SourceContext, n: int) -> list[SourceContext]:
    """The contexts of `n` builds of ctx's input that run in parallel and commit on their own."""
    if n < 1:
        raise InputError(f"partitions must be 1 or more, not {n}")
    if n == 1:
        return [ctx]
    reader = reader_for(ctx.dataset)
    if not hasattr(reader, "partitions"):
        raise InputError(f"{ctx.dataset} inputs cannot be split into partitions; "
                         "ingest them with partitions=1")
    return reader.partitions(ctx, n)


def split(ctx: SourceContext, n: int) -> list[SourceContext]:
    """n contexts, one per Partition: what a reader that honours ctx.partition returns."""
    return [replace(ctx, partition=Partition(k, n)) for k in range(n)]


def load_json(path: Path):
    """A whole JSON input file, or InputError naming it."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise InputError(f"input file {path} is unreadable: {e}") from None
    except RecursionError:  # one document: a value too deep to parse makes the file unreadable
        raise InputError(f"input file {path} is unreadable: JSON nested too deeply") from None


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise InputError(f"input file {path} is unreadable: {e}") from None
    return path


def require_text_file(path: Path) -> Path:
    """require_file, plus: a file with NUL bytes on most of its first lines is binary, not text
    (a NUL on one line is one bad record, rejected on its own)."""
    if path.is_dir():
        raise InputError(f"input file {path} is unreadable: it is a folder")
    require_file(path)
    with open(path, "rb") as f:
        lines = f.read(1 << 16).split(b"\n")
    if 2 * sum(b"\x00" in line for line in lines) > len(lines):
        raise InputError(f"input file {path} is not a text file (it contains binary data)")
    return path


def utf8_lines(path: Path, emit: Emitter, table: str):
    """(record ref, raw bytes, text) of each line; a line that is not UTF-8 becomes a reject."""
    for number, raw in iter_lines(path, emit, table):
        ref = f"line {number}"
        try:
            yield ref, raw, raw.decode("utf-8")
        except UnicodeDecodeError:
            emit.reject(path.name, ref, "line is not valid UTF-8", raw, table)


def json_object(text: str, emit: Emitter, source_file: str, ref: str, raw, table: str
                ) -> dict | None:
    """The JSON object in `text`, or None after rejecting it as malformed."""
    try:
        rec = json.loads(text)
    except ValueError as e:
        emit.reject(source_file, ref, f"malformed JSON line: {e}", raw, table)
        return None
    except RecursionError:
        emit.reject(source_file, ref, "malformed JSON line: nested too deeply", raw, table)
        return None
    if not isinstance(rec, dict):
        emit.reject(source_file, ref, "malformed JSON line: not an object", raw, table)
        return None
    return rec


def iter_lines(path: Path, emit: Emitter, table: str,
               owns: Callable[[int], bool] = lambda number: True) -> Callable:
    """(line number, raw bytes) for each non-empty line, so readers can reject one bad line
    (too long, not UTF-8, malformed JSON) without losing the rest. A line too long is rejected
    only if `owns` its number (one partition of several reading the file)."""
    require_file(path)

    def lines():
        with open(path, "rb") as f:
            number = 0
            while raw := f.readline(MAX_LINE_BYTES + 1):  # bounded: a huge line is not read whole
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    head = raw[:RAW_LIMIT]
                    while raw and not raw.endswith(b"\n"):  # skip to the end of the line
                        raw = f.readline(1 << 20)
                    if owns(number):
                        emit.reject(path.name, f"line {number}",
                                    f"line longer than {MAX_LINE_BYTES} bytes", head, table)
                elif raw.strip():
                    yield number, raw.rstrip(b"\r\n")
    return lines()
