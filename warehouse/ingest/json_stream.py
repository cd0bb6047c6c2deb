"""A JSON input file read one top-level member or array element at a time, so memory holds the
largest record, not the file (Visual Genome's objects.json is ~400 MB).

Each value is parsed by the standard library's own decoder (`JSONDecoder.raw_decode`), so a
record comes out exactly as `json.load` would make it: big integers, NaN, lone surrogates, the
same encodings, and the same depth at which nesting becomes an error. A streaming parser of its
own (ijson's yajl backend) refuses integers past 64 bits and takes ~250 MB for a 20 KB value
nested 10,000 deep."""
from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Iterator

from warehouse.ingest.sources import InputError

CHUNK_BYTES = 1 << 20
NUMBER_TAIL = 3  # characters a number may have after what parses of it: "e+" of "1e+5"
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # json's own
_DECODER = json.JSONDecoder()


class _Cursor:
    """The file's decoded text in a sliding window; `pos` is the next unread character."""

    def __init__(self, path: Path, f):
        self.path = path
        self._f = f
        self._decoder = None
        self.text = ""
        self.pos = 0
        self._dropped = 0   # characters before the window, for error positions
        self._eof = False

    def _read_more(self) -> bool:
        """Append to the window at least as many bytes as it holds unread, so a record spanning
        many reads is re-parsed only a logarithmic number of times; False at the end of the
        file. An invalid record is re-parsed until the end of the file, since only then is it
        sure not to be a valid one cut by the window: an invalid file may be read whole."""
        if self._eof:
            return False
        raw = self._f.read(max(CHUNK_BYTES, len(self.text) - self.pos))
        try:
            if self._decoder is None:  # json.load's encoding detection, on the first bytes
                self._decoder = codecs.getincrementaldecoder(json.detect_encoding(raw))(
                    "surrogatepass")
            text = self._decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise InputError(f"input file {self.path} is unreadable: {e}") from None
        self._eof = not raw
        self._dropped += self.pos
        self.text = self.text[self.pos:] + text
        self.pos = 0
        return True

    def error(self, message: str, at: int | None = None) -> InputError:
        where = self._dropped + (self.pos if at is None else at)
        return InputError(f"input file {self.path} is unreadable: {message} (char {where})")

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end of the file)."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._read_more():
                return ""

    def take(self, char: str, after: str) -> None:
        if self.peek() != char:
            raise self.error(f"Expecting {char!r} {after}")
        self.pos += 1

    def value(self):
        """The next whole JSON value."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                if self._read_more():  # the value may only be cut by the window's end
                    continue
                raise self.error(e.msg, e.pos) from None
            except RecursionError:  # json.load's limit: too deep to parse is unreadable
                raise InputError(f"input file {self.path} is unreadable: JSON nested too "
                                 "deeply") from None
            # a number cut by the window parses short ("1.5e" reads as 1.5): make sure it ends
            if len(self.text) - end < NUMBER_TAIL and self._read_more():
                continue
            self.pos = end
            return value

    def array(self) -> Iterator:
        """The elements of the array starting here."""
        self.take("[", "to start an array")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self.peek() == "]":
                self.pos += 1
                return
            self.take(",", "or ']' after an array element")

    def end(self) -> None:
        if self.peek() != "":
            raise self.error("Extra data")


class Elements:
    """A streamed array value: iterate it once, or leave it and it is skipped."""

    def __init__(self, items: Iterator):
        self._items = items

    def __iter__(self) -> Iterator:
        return self._items

    def skip(self) -> None:
        for _ in self._items:
            pass


def _open(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except OSError as e:
        raise InputError(f"input file {path} is unreadable: {e}") from None


def top_level_kind(path: Path) -> type | None:
    """list or dict by the file's first character (None for anything else); the rest of the
    file is checked as it is read."""
    with _open(path) as f:
        first = _Cursor(path, f).peek()
    return {"[": list, "{": dict}.get(first)


def array_elements(path: Path) -> Iterator:
    """Each element of the file's top-level array, in order (InputError if it is no array)."""
    with _open(path) as f:
        cursor = _Cursor(path, f)
        yield from cursor.array()
        cursor.end()


def object_members(path: Path) -> Iterator[tuple[str, object]]:
    """(key, value) of each member of the file's top-level object, in file order; an array value
    comes as Elements, streamed. A key given twice makes the file unreadable: json.load would
    keep the last silently, and a stream cannot take back what it read of the first."""
    with _open(path) as f:
        cursor = _Cursor(path, f)
        cursor.take("{", "to start an object")
        seen: set[str] = set()
        while cursor.peek() != "}":
            if seen:
                cursor.take(",", "or '}' after an object member")
            at = cursor.pos
            key = cursor.value() if cursor.peek() == '"' else None
            if not isinstance(key, str):
                raise cursor.error("Expecting property name enclosed in double quotes", at)
            if key in seen:
                raise cursor.error(f"key {key!r} given twice", at)
            seen.add(key)
            cursor.take(":", "after a property name")
            if cursor.peek() == "[":
                elements = Elements(cursor.array())
                yield key, elements
                elements.skip()
            else:
                yield key, cursor.value()
        cursor.pos += 1
        cursor.end()


def members_in_order(path: Path, keys: list[str]) -> Iterator[tuple[str, object]]:
    """(key, value) for each of `keys` in that order, whatever the order of the keys in the file
    (JSON does not fix it); None for a key the file lacks. One pass over the file when the keys
    come in that order, one more each time a key comes too early."""
    done = 0
    while done < len(keys):
        present = set()
        for key, value in object_members(path):
            present.add(key)
            if done < len(keys) and key == keys[done]:
                yield key, value
                done += 1
        while done < len(keys) and keys[done] not in present:
            yield keys[done], None
            done += 1
