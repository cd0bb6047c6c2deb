"""A warehouse: Parquet part files per table plus numbered JSON snapshots that say which parts
are live.

Layout under the root:
    tables/<table>/<ingest_id>-<n>.parquet   immutable part files
    _snapshots/00000001.json                 one per commit: live parts of every table + manifest
    _staging/<ingest_id>/                    work in progress of one build (never read by queries)
    _lock                                    serialises writers

A commit writes its parts first, then publishes a new snapshot file under its final name with an
exclusive create (link), so a reader sees either the previous snapshot or the new one, never half
a build, and a writer killed at any point leaves only unreferenced files behind. Every file
operation lives in this class so an object-store root (s3://, where "publish" is a conditional
put) can replace it in one place.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from warehouse.schemas import TABLES


class WarehouseError(RuntimeError):
    """A warehouse cannot be read or written as asked; the message says why."""


@dataclass
class Snapshot:
    version: int
    tables: dict[str, list[str]]                 # table -> part paths relative to the root
    builds: list[dict] = field(default_factory=list)  # manifests of every build, oldest first

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "tables": self.tables,
                           "builds": self.builds}, indent=1, sort_keys=True)


class Warehouse:
    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if "://" in root and not root.startswith("file://"):
            raise WarehouseError(f"only local warehouse roots are supported yet, got {root!r}")
        self.root = Path(root.removeprefix("file://")).expanduser().resolve()

    # ---- paths -------------------------------------------------------------------------------
    @property
    def snapshots_dir(self) -> Path:
        return self.root / "_snapshots"

    def staging_dir(self, ingest_id: str) -> Path:
        return self.root / "_staging" / ingest_id

    def table_dir(self, table: str) -> Path:
        return self.root / "tables" / table

    def absolute(self, rel: str) -> str:
        return str(self.root / rel)

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))

    # ---- snapshots ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.snapshots_dir.is_dir()

    def current(self) -> Snapshot:
        """The newest committed snapshot; an empty one for a new warehouse."""
        versions = self._versions()
        if not versions:
            return Snapshot(0, {t: [] for t in TABLES}, [])
        path = self.snapshots_dir / f"{versions[-1]:08d}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise WarehouseError(f"snapshot {path} is unreadable: {e}") from e
        tables = {t: data["tables"].get(t, []) for t in TABLES}
        return Snapshot(data["version"], tables, data.get("builds", []))

    def _versions(self) -> list[int]:
        if not self.snapshots_dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.snapshots_dir.glob("*.json") if p.stem.isdigit())

    def files(self, table: str, snapshot: Snapshot | None = None) -> list[str]:
        snap = snapshot or self.current()
        return [self.absolute(p) for p in snap.tables.get(table, [])]

    def commit(self, parent: Snapshot, new_parts: dict[str, list[str]], build: dict) -> Snapshot:
        """Publish parent + new_parts as the next snapshot. Fails if another writer committed
        since `parent` was read (callers hold `lock()`, so this only guards against misuse)."""
        tables = {t: list(parent.tables.get(t, [])) + list(new_parts.get(t, [])) for t in TABLES}
        snap = Snapshot(parent.version + 1, tables, parent.builds + [build])
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        final = self.snapshots_dir / f"{snap.version:08d}.json"
        fd, tmp = tempfile.mkstemp(dir=self.snapshots_dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(snap.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, final)  # exclusive: raises FileExistsError if the version is taken
        except FileExistsError as e:
            raise WarehouseError(f"snapshot {snap.version} was committed by another writer") from e
        finally:
            os.unlink(tmp)
        return snap

    # ---- writers -----------------------------------------------------------------------------
    @contextmanager
    def lock(self):
        """Exclusive writer lock for the duration of a build (released if the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "_lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def staging(self, build_id: str):
        """A private folder for one build's work in progress, marked live by a lock held for as
        long as the build runs; removed afterwards. A dead build's folder loses its lock, so
        `remove_orphans` can tell it from a running one."""
        folder = self.staging_dir(build_id)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".live", "w") as marker:
            fcntl.flock(marker, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def publish(self, staged: dict[str, list[Path]], build: dict, check=None) -> Snapshot:
        """Move finished part files from a staging folder into their tables and commit them as
        the next snapshot, under the writer lock (brief: for builds that commit shard by shard,
        such as feature extraction, while other shards keep running). `check(snapshot)`, when
        given, runs under the lock before anything moves and raises to refuse the publish
        (e.g. rows that another writer committed meanwhile); the files then stay staged."""
        with self.lock():
            if check is not None:
                check(self.current())
            moved: dict[str, list[str]] = {}
            for table, paths in staged.items():
                folder = self.table_dir(table)
                folder.mkdir(parents=True, exist_ok=True)
                for path in paths:
                    target = folder / Path(path).name
                    os.replace(path, target)
                    moved.setdefault(table, []).append(self.relative(target))
            return self.commit(self.current(), moved, build)

    @staticmethod
    def _is_live(folder: Path) -> bool:
        try:
            with open(folder / ".live", "r") as marker:
                try:
                    fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(marker, fcntl.LOCK_UN)
                return False
        except FileNotFoundError:
            return False

    def remove_orphans(self) -> int:
        """Delete staging folders of dead builds and part files no snapshot references: the
        leftovers of builds killed midway. Call only under `lock()`."""
        live = {p for parts in self.current().tables.values() for p in parts}
        removed = 0
        staging_root = self.root / "_staging"
        for folder in staging_root.iterdir() if staging_root.is_dir() else []:
            if not self._is_live(folder):
                shutil.rmtree(folder, ignore_errors=True)
        tables_root = self.root / "tables"
        if tables_root.is_dir():
            for part in tables_root.glob("*/*.parquet"):
                if self.relative(part) not in live:
                    part.unlink()
                    removed += 1
        for tmp in self.snapshots_dir.glob(".tmp-*") if self.snapshots_dir.is_dir() else []:
            tmp.unlink()
        return removed
