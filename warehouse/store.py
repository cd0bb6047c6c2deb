"""A warehouse: Parquet part files per table plus numbered JSON snapshots that say which parts are
live. Under the root: tables/<table>/<ingest_id>-<n>.parquet (immutable parts), _snapshots/<n>.json
(one per commit: live parts of every table + manifest), _staging/<ingest_id>/ (a build in progress,
never read by queries) and _lock (serialises writers)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from warehouse.hashing import file_sha256
from warehouse.schemas import TABLES

# Unreferenced parts younger than this survive cleanup, in case a snapshot that refers to them
# is not visible yet (or was lost); parts of builds known to be dead go at once.
ORPHAN_GRACE_S = 3600.0


class WarehouseError(RuntimeError):
    """A warehouse cannot be read or written as asked; the message says why."""


class BrokenChain(WarehouseError):
    """A snapshot does not follow its parent: a stale copy, a gap or an edited file. Nothing is
    read from or written to the warehouse until the snapshot files are repaired."""


class CorruptPart(WarehouseError):
    """A part file is missing or differs from what its snapshot recorded."""


@dataclass
class Snapshot:
    version: int
    tables: dict[str, list[str]]                 # table -> part paths relative to the root
    builds: list[dict] = field(default_factory=list)  # manifests of every build, oldest first
    parts: dict[str, dict] = field(default_factory=dict)  # part path -> {"size", "sha256"}
    parent: dict | None = None                   # {"version", "sha256" of the parent's file}
    digest: str | None = None                    # sha256 of this snapshot file's bytes

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "parent": self.parent, "tables": self.tables,
                           "parts": self.parts, "builds": self.builds}, indent=1, sort_keys=True)


def part_record(path: str | os.PathLike) -> dict:
    """What a snapshot records about a part file: its size and sha256."""
    return {"size": os.stat(path).st_size, "sha256": file_sha256(path)}


class Warehouse:
    """Every file operation on a warehouse lives here, so an object-store root (s3://, where
    "publish" is a conditional put) can replace it in one place.

    A commit writes its parts first, then creates the snapshot file under its final name
    exclusively (link): a reader sees the previous snapshot or the new one, never half a build, and
    a writer killed at any point leaves only unreferenced files behind. Each snapshot records its
    parent (version and sha256 of the parent file's bytes), so a stale or misplaced snapshot file
    breaks the chain and is refused instead of read, and the size and sha256 of every part it adds
    (size checked on every read, hash by `mvp verify`). Snapshots written before these records
    existed are accepted at the start of the chain, their parts unverified.
    """
    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if "://" in root and not root.startswith("file://"):
            raise WarehouseError(f"only local warehouse roots are supported yet, got {root!r}")
        self.root = Path(root.removeprefix("file://")).expanduser().resolve()

    # ---- paths -------------------------------------------------------------------------------
    @property
    def snapshots_dir(self) -> Path:
        return self.root / "_snapshots"

    def snapshot_path(self, version: int) -> Path:
        return self.snapshots_dir / f"{version:08d}.json"

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
        """The newest committed snapshot; an empty one for a new warehouse. Raises BrokenChain
        if the newest file does not follow its parent (e.g. a stale copy put ahead of it)."""
        versions = self._versions()
        if not versions:
            return Snapshot(0, {t: [] for t in TABLES}, [])
        version = versions[-1]
        data, raw = self._load(version)
        # only the newest link, so a read costs two files; verify_chain() checks them all, and
        # each link was checked here when its snapshot was published on top of its parent
        parent = self._load(version - 1) if self.snapshot_path(version - 1).exists() else None
        self._check_link(version, data, parent)
        return self._snapshot(data, raw)

    def verify_chain(self):
        """Yield (version, data) of every snapshot file, oldest first, after checking its link to
        the one before; raises BrokenChain at the first bad link. Reads every snapshot once."""
        parent, parent_version = None, None
        for version in self._versions():
            data, raw = self._load(version)
            # after a gap the parent is missing, which _check_link refuses
            self._check_link(version, data, parent if parent_version == version - 1 else None)
            parent, parent_version = (data, raw), version
            yield version, data

    def _versions(self) -> list[int]:
        if not self.snapshots_dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.snapshots_dir.glob("*.json") if p.stem.isdigit())

    def _load(self, version: int) -> tuple[dict, bytes]:
        path = self.snapshot_path(version)
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
        except (OSError, ValueError) as e:
            raise WarehouseError(f"snapshot {path} is unreadable: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
            raise WarehouseError(f"snapshot {path} is unreadable: not a snapshot object")
        return data, raw

    @staticmethod
    def _check_link(version: int, data: dict, parent: tuple[dict, bytes] | None) -> None:
        """Refuse snapshot `version` unless it follows `parent` (the file numbered version - 1,
        None if there is none)."""
        name = f"snapshot {version:08d}.json"
        if data.get("version") != version:  # a copy of another snapshot under this number
            raise BrokenChain(f"{name} says it is version {data.get('version')}: "
                              f"a stale or misplaced copy?")
        if version > 1 and parent is None:
            raise BrokenChain(f"{name}: its parent {version - 1:08d}.json is missing")
        if "parent" not in data:  # written before snapshots were chained: only at the start
            if parent is not None and "parent" in parent[0]:
                raise BrokenChain(f"{name} has no parent link but follows a linked snapshot")
            return
        expected = None if version == 1 else {"version": version - 1,
                                               "sha256": hashlib.sha256(parent[1]).hexdigest()}
        if data["parent"] != expected:
            raise BrokenChain(f"{name} does not follow {version - 1:08d}.json (its parent link "
                              f"does not match that file): a stale copy or an edited file?")

    @staticmethod
    def _snapshot(data: dict, raw: bytes) -> Snapshot:
        tables = {t: data["tables"].get(t, []) for t in TABLES}
        return Snapshot(data["version"], tables, data.get("builds", []), data.get("parts", {}),
                        data.get("parent"), hashlib.sha256(raw).hexdigest())

    def files(self, table: str, snapshot: Snapshot | None = None) -> list[str]:
        """Absolute paths of a table's parts; raises CorruptPart if one is missing or its size
        differs from the recorded one (a cheap stat; `mvp verify` checks the hashes)."""
        snap = snapshot or self.current()
        paths = []
        for rel in snap.tables.get(table, []):
            path = self.root / rel
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise CorruptPart(f"part {rel} of table {table} (snapshot {snap.version}) is "
                                  f"missing; run `mvp verify`") from None
            recorded = snap.parts.get(rel)  # parts from before records existed: None
            if recorded is not None and size != recorded["size"]:
                raise CorruptPart(f"part {rel} of table {table} (snapshot {snap.version}) is "
                                  f"{size} bytes, {recorded['size']} recorded; run `mvp verify`")
            paths.append(str(path))
        return paths

    def commit(self, parent: Snapshot, new_parts: dict[str, list[str]], build: dict,
               records: dict[str, dict] | None = None) -> Snapshot:
        """Publish parent + new_parts as the next snapshot, linked to `parent`'s file. `records`
        gives part_record() of new parts hashed earlier; the others are hashed here (only new
        parts: listed ones keep their records). Fails if another writer committed since `parent`
        was read (callers hold `lock()`, so this only guards against misuse) or if the chain is
        broken."""
        latest = self.current()  # raises BrokenChain: never publish on top of a broken chain
        if (latest.version, latest.digest) != (parent.version, parent.digest):
            raise WarehouseError(f"snapshot {latest.version} was committed by another writer")
        tables = {t: list(parent.tables.get(t, [])) + list(new_parts.get(t, [])) for t in TABLES}
        parts = dict(parent.parts)
        for rel in (p for ps in new_parts.values() for p in ps):
            parts[rel] = (records or {}).get(rel) or part_record(self.root / rel)
        link = {"version": parent.version, "sha256": parent.digest} if parent.version else None
        # the manifest records the version it is published as (`mvp history`, ingest reruns)
        build = {**build, "snapshot": parent.version + 1}
        snap = Snapshot(parent.version + 1, tables, parent.builds + [build], parts, link)
        raw = snap.to_json().encode()
        snap.digest = hashlib.sha256(raw).hexdigest()  # what the next snapshot links to
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        final = self.snapshot_path(snap.version)
        fd, tmp = tempfile.mkstemp(dir=self.snapshots_dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
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
    def lock(self, timeout: float | None = None):
        """Exclusive writer lock for the duration of a build (released if the process dies). The
        holder notes who it is in the lock file; a writer that waits longer than `timeout`
        seconds (default $MVP_LOCK_TIMEOUT_S, else 600) gives up with an error naming it."""
        import sys
        if timeout is None:
            timeout = float(os.environ.get("MVP_LOCK_TIMEOUT_S", 600))
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        with open(self.root / "_lock", "a+") as f:  # not "w": opening must keep the holder's note
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        f.seek(0)
                        holder = f.read(2000).strip() or "holder unknown"
                        raise WarehouseError(f"warehouse {self.root} is locked by another writer "
                                             f"({holder}); gave up after {timeout:g} s") from None
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {os.uname().nodename} since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}: {' '.join(sys.argv)[:1000]}\n")
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)
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
        # hashed before taking the lock: staged files are private to this build
        records = {self.relative(self.table_dir(table) / Path(path).name): part_record(path)
                   for table, paths in staged.items() for path in paths}
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
            return self.commit(self.current(), moved, build, records)

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

    def remove_orphans(self, grace_s: float = ORPHAN_GRACE_S) -> int:
        """Delete staging folders of dead builds and part files no snapshot references: the
        leftovers of builds killed midway. A part is kept if any snapshot file present refers
        to it, and an unreferenced one only goes once it is older than `grace_s` seconds or
        its build is known dead. Refuses (BrokenChain) on a broken chain. Call only under
        `lock()`."""
        # every snapshot, not just the newest: a stale newest file must not free live parts
        live = {p for _, data in self.verify_chain()
                for parts in data.get("tables", {}).values() for p in parts}
        staging_root = self.root / "_staging"
        dead = [f for f in staging_root.iterdir() if not self._is_live(f)] \
            if staging_root.is_dir() else []
        for folder in dead:
            shutil.rmtree(folder, ignore_errors=True)
        dead_builds = {f.name for f in dead}
        removed, now = 0, time.time()
        tables_root = self.root / "tables"
        for part in tables_root.glob("*/*.parquet") if tables_root.is_dir() else []:
            if self.relative(part) in live:
                continue
            # parts are named <build id>[-<n>]: a dead build's parts cannot be committed later
            of_dead_build = any(part.stem == b or part.stem.startswith(b + "-")
                                for b in dead_builds)
            if of_dead_build or now - part.stat().st_mtime >= grace_s:
                part.unlink()
                removed += 1
        for tmp in self.snapshots_dir.glob(".tmp-*") if self.snapshots_dir.is_dir() else []:
            tmp.unlink()
        return removed
