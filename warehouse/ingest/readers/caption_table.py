"""Caption tables in the Conceptual Captions style: one (caption, image) pair per row of a TSV or
CSV file whose images are already on local disk."""
from __future__ import annotations

import csv
from pathlib import Path

from warehouse.ingest.emitter import Emitter, stable_id
from warehouse.ingest.sources import InputError, SourceContext, iter_lines, require_text_file, split

IMAGE_COLUMNS = ("image", "path", "file", "filepath", "file_path", "image_path", "filename",
                 "url", "image_url")


def inputs(ctx: SourceContext) -> list[Path]:
    if ctx.source.is_dir():
        raise InputError(f"input file {ctx.source} is a folder; give the .tsv or .csv file")
    return [require_text_file(ctx.source)]


def partitions(ctx: SourceContext, n: int) -> list[SourceContext]:
    """n builds that read every n-th line each (all of them read the header). An image named on
    lines of two partitions is staged by both; whichever commits second finds it present."""
    return split(ctx, n)


def _parse(line: str, delimiter: str) -> list[str] | None:
    if delimiter == "\t":
        return line.split("\t")
    try:
        rows = list(csv.reader([line], delimiter=delimiter, strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


def _header(fields: list[str]) -> tuple[int, int] | None:
    """(caption column, image column) when `fields` is a header row."""
    names = [f.strip().lower() for f in fields]
    img = next((names.index(c) for c in IMAGE_COLUMNS if c in names), None)
    if "caption" not in names or img is None:
        return None
    return names.index("caption"), img


def read(ctx: SourceContext, emit: Emitter) -> None:
    """`.csv` is comma-separated with standard CSV quoting; anything else (`.tsv`, CC's own files)
    is tab-separated with no quoting, as CC writes it. A first row with a `caption` column and an
    image column (IMAGE_COLUMNS) is a header; otherwise every row is `caption<TAB>image path`, like
    CC's `caption<TAB>url`. Image paths resolve under --image-root (default: the table's folder);
    absolute paths, `..` escapes and http(s) URLs are rejected (download the images first). One
    image per distinct path (source id: the path relative to the image root); caption ids hash
    (image path, caption text), so the same caption twice for one image is a duplicate."""
    path = ctx.source
    name = path.name
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    root = ctx.images_root().resolve()
    columns, n_fields, good_rows, first = (0, 1), 2, 0, True

    for number, raw in iter_lines(path, emit, "captions", owns=ctx.owns):
        ref = f"line {number}"
        # surrogateescape keeps undecodable bytes so a bad caption can be rejected on its own
        line = raw.decode("utf-8", errors="surrogateescape")
        fields = _parse(line, delimiter)
        if first:
            first = False
            header = _header(fields) if fields else None
            if header is not None:
                columns, n_fields = header, len(fields)
                continue
        if fields is None or len(fields) != n_fields:
            if ctx.owns(number):
                emit.reject(name, ref, "malformed row", raw, "captions")
            continue
        good_rows += 1  # over the whole file: every partition agrees whether it has rows
        if not ctx.owns(number):
            continue
        text, image_path = fields[columns[0]], fields[columns[1]].strip()
        try:
            image_path.encode("utf-8")
        except UnicodeEncodeError:
            emit.reject(name, ref, "image path is not valid UTF-8", raw, "images")
            continue
        if image_path.lower().startswith(("http://", "https://")):
            emit.reject(name, ref, "remote image URL: download images first", raw, "images")
            continue
        found = emit.image_at(root, image_path, ctx.split, name, ref, raw)
        if found is None:
            continue
        iid, source_id = found
        try:
            text.encode("utf-8")
            key = " ".join(text.split())
        except UnicodeEncodeError:   # undecodable bytes: the emitter rejects them as bytes
            text = key = text.encode("utf-8", errors="surrogateescape")
        emit.caption("tsv:c:" + stable_id(source_id, key), iid, text, ctx.split, name, ref, raw)

    if good_rows == 0:
        raise InputError(f"input file {path} has no readable rows "
                         f"(expected caption{'<TAB>' if delimiter == chr(9) else ','}image path)")
