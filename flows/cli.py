"""`mvp`: the command line. Data-building commands run the same Prefect flows as the
deployments; query commands open the warehouse through DuckDB without Prefect."""
from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

from flows.defaults import WAREHOUSE
from flows.flags import Entrypoint, add_command

INGEST = Entrypoint("flows.ingest", "ingest_flow")
FEATURES = Entrypoint("flows.feature_store", "features_flow")
VINVL_IMPORT = Entrypoint("flows.feature_store", "vinvl_import_flow")
ZERO_SHOT = Entrypoint("flows.feature_store", "zero_shot_flow")
CONCEPTS = Entrypoint("flows.concepts", "concepts_flow")
CACHE = Entrypoint("flows.cache", "cache_flow")
CLIP_BOOTSTRAP = Entrypoint("flows.clip_bootstrap", "clip_bootstrap_flow")
SERVE = Entrypoint("flows.serve", "serve")


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
    kwargs = INGEST.kwargs(args)
    if args.no_prefect:
        from warehouse.ingest.build import ingest
        print(ingest(**kwargs).summary())
    else:
        INGEST(**kwargs)  # prints its summary through the Prefect logger
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


def cmd_compact(args) -> int:
    from warehouse.compact import compact
    rows = [(r["table"], r["parts_before"], r["parts_merged"], r.get("parts_after"), r["rows"],
             r["snapshot"]) for r in compact(args.warehouse, args.table,
                                             int(args.target_mb * (1 << 20)))]
    print_table(["table", "parts before", "merged", "parts after", "rows", "snapshot"], rows)
    return 0


def cmd_features(args) -> int:
    kwargs = FEATURES.kwargs(args)
    if args.no_prefect:
        if args.dask_address or args.gpus:
            raise ValueError("--dask-address and --gpus run shards as Prefect tasks: drop "
                             "--no-prefect")
        from features.extract import extract_features
        print(extract_features(**kwargs))
    else:
        from flows.feature_store import run_features
        run_features(dask_address=args.dask_address, gpus=args.gpus, **kwargs)
    return 0


def cmd_concepts(args) -> int:
    kwargs = CONCEPTS.kwargs(args)
    if args.no_prefect:
        from features.vocabulary import build_vocabulary
        print(build_vocabulary(**kwargs))
    else:
        CONCEPTS(**kwargs)
    return 0


def cmd_serve(args) -> int:
    SERVE(project=Path.cwd(), **SERVE.kwargs(args))
    return 0


def run_flow(entry: Entrypoint, args) -> int:
    entry(**entry.kwargs(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvp", description=__doc__)
    p.set_defaults(prefect=True)  # a command runs a Prefect flow unless it sets prefect=False
    sub = p.add_subparsers(dest="command", required=True)

    def warehouse_arg(sp):  # for the commands that run no flow
        sp.add_argument("--warehouse", default=WAREHOUSE, help="warehouse root, a local folder "
                        "or an object-store URL (s3://bucket/prefix)")

    def no_prefect_arg(sp):
        sp.add_argument("--no-prefect", action="store_true",
                        help="run the same steps without Prefect (no flow run is recorded)")

    from warehouse.ingest.sources import READERS
    sp = add_command(sub, "ingest", "read a data set into the warehouse (Prefect flow)", INGEST,
                     options={"dataset": {"required": True, "choices": list(READERS)}})
    no_prefect_arg(sp)
    sp.set_defaults(func=cmd_ingest)

    sp = add_command(sub, "sql", "run one read-only SQL query over the warehouse")
    sp.add_argument("query", help="one query (anything else is refused before it runs)")
    warehouse_arg(sp)
    from warehouse.catalog import BATCH_ROWS, DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT_S
    sp.add_argument("--format", choices=["table", "csv", "json"], default="table",
                    help=f"table (column widths from the first {BATCH_ROWS} rows), csv or json "
                         "lines")
    sp.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="seconds the query may run, reading its rows included; 0: no limit")
    sp.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT,
                    help="DuckDB memory limit, e.g. 512MB or 4GB; larger sorts and joins spill "
                         "to a private temporary folder")
    sp.set_defaults(func=cmd_sql, prefect=False)

    sp = add_command(sub, "tables", "list tables with row counts")
    warehouse_arg(sp)
    sp.set_defaults(func=cmd_tables, prefect=False)

    sp = add_command(sub, "history", "list the builds (manifests) of the warehouse")
    warehouse_arg(sp)
    sp.set_defaults(func=cmd_history, prefect=False)

    sp = add_command(sub, "verify", "check the snapshot chain and every part of the current "
                                    "snapshot (exists, size, sha256); exit 1 if any is bad")
    warehouse_arg(sp)
    sp.set_defaults(func=cmd_verify, prefect=False)

    from warehouse.compact import TARGET_BYTES
    sp = add_command(sub, "compact", "merge small parts into large ones sorted by image, one "
                                     "commit per table; replaced parts are vacuumed by the "
                                     "cleanup once the grace period has passed")
    warehouse_arg(sp)
    sp.add_argument("--table", action="append", help="only this table (repeatable; default all)")
    sp.add_argument("--target-mb", type=float, default=TARGET_BYTES / (1 << 20),
                    help="size of a merged part")
    sp.set_defaults(func=cmd_compact, prefect=False)

    from warehouse.vectors import DTYPES
    dtypes = {"dtype": {"choices": list(DTYPES)}}
    sp = add_command(sub, "features", "extract region features into a feature set (Prefect flow)",
                     FEATURES, options=dtypes)
    sp.add_argument("--dask-address", help="run shards on this Dask cluster "
                                           "(e.g. tcp://127.0.0.1:8786)")
    sp.add_argument("--gpus", type=int, help="run shards on a local Dask cluster of one worker "
                                             "per GPU, each pinned to its own (needs dask-cuda)")
    no_prefect_arg(sp)
    sp.set_defaults(func=cmd_features)

    sp = add_command(sub, "clip-bootstrap", "train a CLIP on the warehouse's own pairs with "
                                            "open_clip_train, a feature backbone for when no "
                                            "pretrained weights can be downloaded (Prefect flow)",
                     CLIP_BOOTSTRAP)
    sp.set_defaults(func=partial(run_flow, CLIP_BOOTSTRAP))

    sp = add_command(sub, "import-vinvl", "import VinVL's precomputed features.tsv as a feature "
                                          "set (Prefect flow)", VINVL_IMPORT, options=dtypes)
    sp.set_defaults(func=partial(run_flow, VINVL_IMPORT))

    sp = add_command(sub, "tag-regions", "zero-shot tag regions with vocabulary concepts (needs "
                                         "pretrained weights; Prefect flow)", ZERO_SHOT)
    sp.set_defaults(func=partial(run_flow, ZERO_SHOT))

    sp = add_command(sub, "concepts", "build the concept vocabulary (Prefect flow)", CONCEPTS)
    no_prefect_arg(sp)
    sp.set_defaults(func=cmd_concepts)

    sp = add_command(sub, "cache", "build the memory-mapped training cache of a split that "
                                   "`mvp pretrain --feature-cache` reads (Prefect flow)", CACHE)
    sp.set_defaults(func=partial(run_flow, CACHE))

    from flows.cli_models import add_model_commands
    add_model_commands(sub)

    sp = add_command(sub, "serve", "Prefect server + worker and MLflow server on loopback, "
                                   "until Ctrl-C", SERVE, skip=("project", "ready", "stop"))
    sp.set_defaults(func=cmd_serve, prefect=False)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_offline_defaults()
    args = build_parser().parse_args(argv)
    if args.prefect and not getattr(args, "no_prefect", False):
        _guard_prefect_temporary_server()
    try:
        return args.func(args)
    except Exception as e:
        if os.environ.get("MVP_DEBUG") or not isinstance(e, user_errors()):
            raise
        print(f"mvp {args.command}: error: {e}  (MVP_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2


def user_errors() -> tuple[type[Exception], ...]:
    """The errors that name a problem with what the user gave (a missing file, a bad value, a
    query DuckDB refused, a model MLflow does not have): one line and exit 2, not a traceback.
    Imported only once something failed: MLflow takes a second to import."""
    import duckdb
    from mlflow.exceptions import MlflowException

    from warehouse.catalog import ReadOnlyViolation
    from warehouse.ingest.sources import InputError
    from warehouse.store import WarehouseError
    return (InputError, WarehouseError, ReadOnlyViolation, LookupError, ValueError,
            FileNotFoundError, duckdb.Error, MlflowException)


if __name__ == "__main__":
    sys.exit(main())
