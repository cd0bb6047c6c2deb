"""What a reader calls for every record it reads: generic checks (image files, text, box shape),
failures as `rejects` rows, the rest staged. Whole-build checks (duplicate ids, unknown images,
boxes outside their image) happen at merge time, so readers only parse their format."""
from __future__ import annotations

import hashlib
import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from warehouse.ingest.checks import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_PATH_CHARS,
    BadRecord,
    check_box,
    check_number,
    check_row,
    check_string,
    clean_text,
    inspect_image,
    resolve_under,
    shown,
)
from warehouse.ingest.staging import StagingWriter
from warehouse.schemas import ENTAILMENT_LABELS

RAW_LIMIT = 2000    # characters of a rejected record kept for a person to read
REASON_LIMIT = 500  # characters of a reject's reason, source file name and record reference


def image_id(dataset: str, source_id) -> str:
    return f"{dataset}:{source_id}"


def stable_id(*parts) -> str:
    """A short content hash for records whose source gives no id (e.g. captions in a TSV)."""
    return hashlib.sha1("\x1f".join(_id_part(p) for p in parts).encode("utf-8", "surrogatepass")
                        ).hexdigest()[:16]


def _id_part(part) -> str:
    try:
        return str(part)
    except RecursionError:  # nested too deeply to be a valid field: its record is rejected
        return shown(part)


def _storable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, as valid UTF-8 (what a reject row says about a record
    must never be what fails the build)."""
    return text[:limit].encode("utf-8", errors="backslashreplace").decode("utf-8")


def _raw_text(raw) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bytes):
        text = raw[:4 * RAW_LIMIT].decode("utf-8", errors="backslashreplace")
    elif isinstance(raw, str):
        text = raw
    else:
        try:
            text = json.dumps(raw, ensure_ascii=True, default=str)
        except (RecursionError, ValueError):  # too deeply nested, or an int too long to print
            text = shown(raw)
    return _storable(text, RAW_LIMIT)


@dataclass
class Counts:
    read: dict[str, int] = field(default_factory=dict)       # table -> records read
    rejected: dict[str, int] = field(default_factory=dict)   # reason -> count (at read time)

    def add_read(self, table: str, n: int = 1) -> None:
        self.read[table] = self.read.get(table, 0) + n


class Emitter:
    def __init__(self, dataset: str, ingest_id: str, staging: StagingWriter,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, image_workers: int = 4,
                 max_in_flight: int = 256):
        self.dataset = dataset
        self.ingest_id = ingest_id
        self.staging = staging
        self.max_image_pixels = max_image_pixels
        self.counts = Counts()
        self._seq = 0
        self._pool = ThreadPoolExecutor(image_workers) if image_workers > 0 else None
        self._pending: deque[tuple[Future, dict, str, str, object]] = deque()
        self._max_in_flight = max_in_flight
        self._seen_paths: dict[str, str] = {}  # relative image path -> image id (image_at)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _stage(self, table: str, row: dict, source_file: str, record_ref: str, raw=None) -> None:
        try:
            check_row(table, row)
        except BadRecord as e:
            self.reject(source_file, record_ref, str(e), raw if raw is not None else row, table)
            return
        row.update(dataset=row.get("dataset", self.dataset), ingest_id=self.ingest_id,
                   _seq=self._next_seq(), _source_file=source_file, _record_ref=str(record_ref))
        self.counts.add_read(table)
        self.staging.add(table, row)

    # ---- records -----------------------------------------------------------------------------
    def reject(self, source_file: str, record_ref, reason: str, raw=None, table: str = "record"
               ) -> None:
        """A record that cannot be accepted. `table` is what it would have become (for counts)."""
        self.counts.add_read(table)
        reason = _storable(reason, REASON_LIMIT)
        source_file, record_ref = (_storable(str(s), REASON_LIMIT) for s in (source_file,
                                                                             record_ref))
        self.counts.rejected[reason] = self.counts.rejected.get(reason, 0) + 1
        self.staging.add("rejects", {
            "id": stable_id(self.dataset, source_file, record_ref, reason),
            "dataset": self.dataset, "source_file": str(source_file),
            "record_ref": str(record_ref), "reason": reason, "raw": _raw_text(raw),
            "ingest_id": self.ingest_id, "_seq": self._next_seq(),
            "_source_file": str(source_file), "_record_ref": str(record_ref)})

    def image(self, source_id, path: Path | str | None, split: str | None, source_file: str,
              record_ref, raw=None, dataset: str | None = None) -> str:
        """Validate the image file (in a worker thread) and stage it; returns its image id.
        `path` may be a BadRecord raised while resolving it, for a uniform reject."""
        dataset = dataset or self.dataset
        iid = image_id(dataset, source_id)
        row = {"id": iid, "dataset": dataset, "source_id": str(source_id), "split": split,
               "path": str(path) if path is not None else None}
        if path is None:
            self.reject(source_file, record_ref, "missing image path", raw, "images")
            return iid
        try:
            check_string(str(path), "image path", MAX_PATH_CHARS)  # before the OS sees it
        except BadRecord as e:
            self.reject(source_file, record_ref, str(e), raw, "images")
            return iid
        if self._pool is None:
            self._finish_image(self._inspect(Path(path)), row, source_file, record_ref, raw)
        else:
            fut = self._pool.submit(self._inspect, Path(path))
            self._pending.append((fut, row, source_file, record_ref, raw))
            while len(self._pending) > self._max_in_flight:
                self._drain_one()
        return iid

    def image_at(self, root: Path, relative: str, split: str | None, source_file: str,
                 record_ref, raw=None) -> tuple[str, str] | None:
        """The image a record names by a path relative to `root`, emitted the first time a
        path is seen: (image id, normalised relative path), or None after rejecting the
        record because the path escapes the root."""
        try:
            path = resolve_under(root, relative)
        except BadRecord as e:
            self.reject(source_file, record_ref, str(e), raw, "images")
            return None
        rel = path.relative_to(root.resolve()).as_posix()
        if rel not in self._seen_paths:
            self._seen_paths[rel] = self.image(rel, path, split, source_file, record_ref, raw)
        return self._seen_paths[rel], rel

    def _inspect(self, path: Path):
        try:
            return inspect_image(path, self.max_image_pixels)
        except BadRecord as e:
            return e

    def _drain_one(self) -> None:
        fut, row, source_file, record_ref, raw = self._pending.popleft()
        self._finish_image(fut.result(), row, source_file, record_ref, raw)

    def _finish_image(self, result, row, source_file, record_ref, raw) -> None:
        if isinstance(result, BadRecord):
            self.reject(source_file, record_ref, str(result), raw if raw is not None else row,
                        "images")
            return
        row["width"], row["height"], row["sha256"] = result
        self._stage("images", row, source_file, record_ref, raw)

    def image_row(self, row: dict, source_file: str, record_ref) -> None:
        """An image whose width, height and sha256 the caller already knows (generators)."""
        self._stage("images", dict(row), source_file, record_ref)

    def caption(self, caption_id: str, image_id: str, text, split: str | None,
                source_file: str, record_ref, raw=None, box=None) -> None:
        try:
            text = clean_text(text)
            box = list(check_box(box)) if box is not None else None
        except BadRecord as e:
            self.reject(source_file, record_ref, str(e), raw, "captions")
            return
        self._stage("captions", {"id": caption_id, "image_id": image_id, "text": text,
                                 "split": split, "box": box}, source_file, record_ref, raw)

    def region(self, region_id: str, image_id: str, box, label: str | None, source: str,
               source_file: str, record_ref, raw=None, score: float | None = None,
               attributes: list[str] | None = None) -> None:
        try:
            x1, y1, x2, y2 = check_box(box)
            if label is not None and not isinstance(label, str):
                raise BadRecord(f"label is not a string: {type(label).__name__}")
            score = None if score is None else check_number(score, "score")
        except BadRecord as e:
            self.reject(source_file, record_ref, str(e), raw, "regions")
            return
        self._stage("regions", {"region_id": region_id, "image_id": image_id, "x1": x1,
                                "y1": y1, "x2": x2, "y2": y2,
                                "label": label.strip().lower() if label else None,
                                "attributes": attributes, "source": source,
                                "score": score}, source_file, record_ref, raw)

    def question(self, question_id: str, image_id: str, text, answers: dict[str, int] | None,
                 split: str | None, source_file: str, record_ref, raw=None) -> None:
        try:
            text = clean_text(text)
        except BadRecord as e:
            self.reject(source_file, record_ref, str(e), raw, "questions")
            return
        answer_list = ([{"answer": a, "count": int(c)} for a, c in sorted(answers.items())]
                       if answers else [])
        self._stage("questions", {"id": question_id, "image_id": image_id, "question": text,
                                  "answers": answer_list, "split": split},
                    source_file, record_ref, raw)

    def relation(self, relation_id: str, image_id: str, subject_id: str, predicate: str,
                 object_id: str, source_file: str, record_ref, raw=None) -> None:
        try:
            predicate = clean_text(predicate).lower()
        except BadRecord as e:
            self.reject(source_file, record_ref, f"relation predicate: {e}", raw, "relations")
            return
        self._stage("relations", {"id": relation_id, "image_id": image_id,
                                  "subject_id": subject_id, "predicate": predicate,
                                  "object_id": object_id}, source_file, record_ref, raw)

    def entailment(self, entailment_id: str, image_id: str, hypothesis, label,
                   split: str | None, source_file: str, record_ref, raw=None) -> None:
        try:
            hypothesis = clean_text(hypothesis)
        except BadRecord as e:
            self.reject(source_file, record_ref, f"hypothesis: {e}", raw, "entailment")
            return
        if label not in ENTAILMENT_LABELS:
            self.reject(source_file, record_ref, f"entailment label {shown(label)} is not one "
                        f"of {', '.join(ENTAILMENT_LABELS)}", raw, "entailment")
            return
        self._stage("entailment", {"id": entailment_id, "image_id": image_id,
                                   "hypothesis": hypothesis, "label": label, "split": split},
                    source_file, record_ref, raw)

    def referring(self, referring_id: str, image_id: str, region_id: str, expression,
                  split: str | None, source_file: str, record_ref, raw=None) -> None:
        try:
            expression = clean_text(expression)
        except BadRecord as e:
            self.reject(source_file, record_ref, f"referring expression: {e}", raw, "referring")
            return
        self._stage("referring", {"id": referring_id, "image_id": image_id,
                                  "region_id": region_id, "expression": expression,
                                  "split": split}, source_file, record_ref, raw)

    def rows(self, table: str, columns: dict[str, list], source_file: str) -> None:
        """Column-wise rows from a trusted generator (already valid; still merged and deduped)."""
        n = len(next(iter(columns.values())))
        seq_start = self._seq + 1
        self._seq += n
        cols = dict(columns)
        cols.setdefault("dataset", [self.dataset] * n)
        cols["ingest_id"] = [self.ingest_id] * n
        cols["_seq"] = list(range(seq_start, seq_start + n))
        cols["_source_file"] = [source_file] * n
        cols.setdefault("_record_ref", [str(i) for i in range(n)])
        self.counts.add_read(table, n)
        self.staging.extend(table, cols)

    def close(self) -> None:
        while self._pending:
            self._drain_one()
        if self._pool is not None:
            self._pool.shutdown()
