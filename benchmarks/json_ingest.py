"""Streamed vs whole-file reading of the big JSON inputs: seconds and peak memory, side by side.

Each run reads one generated file through the real reader in a fresh child process, with an
emitter that only counts, so the time and peak RSS are the reader's own:
  whole-file  - the reader as it was: json.load the file, then walk its lists
  streamed    - the product: one value at a time (warehouse/ingest/json_stream.py)
Files: Visual Genome objects.json (a list of per-image entries) and COCO instances_<split>.json
(images, annotations, then categories: the order of COCO's own files, which takes the streamed
reader two passes).

    python benchmarks/json_ingest.py [--mb 25 50 100] [--coco-mb 50]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from warehouse.ingest import json_stream
from warehouse.ingest.readers import coco, visual_genome
from warehouse.ingest.sources import SourceContext, load_json

mode, fmt, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
if mode == "whole-file":  # the readers before streaming: the document loaded, then walked
    visual_genome.array_elements = lambda path: iter(load_json(path))

    def visit_whole(path, steps):
        data = load_json(path)
        for key, step in steps:
            value = data.get(key)
            step(json_stream.Elements(iter(value)) if isinstance(value, list) else value)
    coco.visit_members = visit_whole


class CountingEmitter:
    rows = 0

    def __getattr__(self, kind):
        def emit(*args, **kwargs):
            CountingEmitter.rows += 1
        return emit


before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if fmt == "vg":
    visual_genome.read(SourceContext("vg", folder), CountingEmitter())
else:
    coco.read(SourceContext("coco", folder, split="val", image_root=folder), CountingEmitter())
seconds = time.perf_counter() - t
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"seconds": seconds, "rows": CountingEmitter.rows, "peak_growth_mib": growth / 1024}))
"""


def write_vg(folder: Path, mb: float) -> int:
    """objects.json of ~`mb` MB (40 objects an image, like VG's mean of 35); bytes written."""
    (folder / "image_data.json").write_text("[]")
    with open(folder / "objects.json", "w") as f:
        f.write("[")
        for i in range(int(mb * 1e6 / 4200)):
            objects = [{"object_id": i * 100 + j, "x": j, "y": j, "w": 10, "h": 12,
                        "names": ["tree"], "synsets": ["tree.n.01"]} for j in range(40)]
            f.write(("," if i else "") + json.dumps({"image_id": i, "objects": objects}))
        f.write("]")
    return (folder / "objects.json").stat().st_size


def write_coco(folder: Path, mb: float) -> int:
    """captions (tiny) and instances_val.json of ~`mb` MB with polygons like COCO's."""
    ann = folder / "annotations"
    ann.mkdir()
    n = int(mb * 1e6 / 330)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480}
              for i in range(n // 7)]
    (ann / "captions_val.json").write_text(json.dumps({"images": [], "annotations": []}))
    with open(ann / "instances_val.json", "w") as f:
        f.write('{"images": ' + json.dumps(images) + ', "annotations": [')
        for i in range(n):
            f.write(("," if i else "") + json.dumps({
                "id": i, "image_id": i // 7, "category_id": 1 + i % 80, "iscrowd": 0,
                "area": 1234.5, "bbox": [10.5, 20.25, 100.0, 80.75],
                "segmentation": [[10.5 + k for k in range(24)]]}))
        f.write('], "categories": ' + json.dumps([{"id": c, "name": f"c{c}"}
                                                  for c in range(1, 81)]) + "}")
    return (ann / "instances_val.json").stat().st_size


def run(mode: str, fmt: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, fmt, str(folder)], cwd=ROOT,
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[25, 50, 100],
                    help="sizes of the VG objects.json files")
    ap.add_argument("--coco-mb", type=float, nargs="*", default=[50],
                    help="sizes of the COCO instances files")
    args = ap.parse_args()
    print(f"{'file':<22}{'MB':>6}  {'whole s':>8}{'stream s':>9}{'x time':>7}  "
          f"{'whole MiB':>10}{'stream MiB':>11}{'x memory':>9}")
    for fmt, sizes, write in (("vg", args.mb, write_vg), ("coco", args.coco_mb, write_coco)):
        for mb in sizes:
            with tempfile.TemporaryDirectory(prefix="mvp-json-") as tmp:
                size = write(Path(tmp), mb)
                whole, stream = (run(mode, fmt, Path(tmp)) for mode in ("whole-file",
                                                                         "streamed"))
            assert whole["rows"] == stream["rows"], (whole, stream)
            name = "vg objects.json" if fmt == "vg" else "coco instances_val"
            print(f"{name:<22}{size / 1e6:6.0f}  {whole['seconds']:8.1f}{stream['seconds']:9.1f}"
                  f"{stream['seconds'] / whole['seconds']:7.2f}  "
                  f"{whole['peak_growth_mib']:10.0f}{stream['peak_growth_mib']:11.1f}"
                  f"{stream['peak_growth_mib'] / whole['peak_growth_mib']:9.3f}", flush=True)


if __name__ == "__main__":
    main()
