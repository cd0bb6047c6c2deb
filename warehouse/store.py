"""A warehouse: Parquet part files per table plus a commit log that says which parts are live.
Under the root (a local folder or an object-store prefix such as s3://bucket/prefix):
tables/<table>/<build id>[-<n>].parquet (immutable parts), _log/ (one small entry per commit and
a checkpoint every so often, see warehouse/log.py), _snapshots/ (full copies written by older
code, read only), _staging/<build id>/ (a build in progress on a local root; object-store roots
stage in a local temporary folder) and _lock (an optional writer lock on local roots)."""
from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.dataset as ds

from warehouse import legacy, log
from warehouse.faults import fault_point
from warehouse.hashing import file_sha256
from warehouse.snapshot import BrokenChain, CommitConflict, CorruptPart, Snapshot, WarehouseError
from warehouse.storage import open_storage

__all__ = ["ORPHAN_GRACE_S", "BrokenChain", "CommitConflict", "CorruptPart", "Snapshot",
           "Warehouse", "WarehouseError", "part_record"]

# Unreferenced parts younger than this survive cleanup, in case a commit that refers to them is
# not visible yet (or a writer is between uploading them and committing); parts of builds known
# to be dead go at once.
ORPHAN_GRACE_S = 3600.0
# Up to this many parts, Warehouse.files asks each part's size instead of listing its folder
FEW_PARTS = 8
# How often publish() re-reads, re-checks and retries after another writer committed first.
PUBLISH_ATTEMPTS = 20


def part_record(path: str | os.PathLike) -> dict:
    """What a commit records about a (local) part file: its size and sha256."""
    return {"size": os.stat(path).st_size, "sha256": file_sha256(path)}


class Warehouse:
    """Every file operation on a warehouse lives here and in its storage backend.

    A commit writes its parts first, then creates the next log entry only if it is absent (an
    exclusive create locally, a conditional PUT on S3): a reader sees the previous version or
    the new one, never half a build; a writer killed at any point leaves only unreferenced files
    behind; and of two writers that race for a version exactly one wins, the other re-reads,
    re-runs its checks and retries (publish). Correctness never rests on `lock()`, which on a
    local root only serialises writers that want it. Each entry records its parent (version and
    sha256 of the parent entry's bytes), so a stale or misplaced file breaks the chain and is
    refused instead of read, and the size and sha256 of every part it adds (size checked on
    every read, hash by `mvp verify`).
    """

    def __init__(self, root: str | os.PathLike, storage_options: dict | None = None,
                 serialise_writers: bool = True, checkpoint_every: int = log.CHECKPOINT_EVERY):
        self.storage = open_storage(str(root), storage_options)
        self.log = log.CommitLog(self.storage, checkpoint_every)
        self.serialise_writers = serialise_writers
        self.root = self._at("")

    # ---- paths -------------------------------------------------------------------------------
    def _at(self, rel: str) -> Path | str:
        """A Path on a local root, a URL on an object store."""
        url = self.storage.url(rel)
        return Path(url) if self.storage.is_local else url

    def staging_dir(self, build_id: str) -> Path:
        """Always a local folder: under the root when it is local, else in the temp folder."""
        if self.storage.is_local:
            return self.root / "_staging" / build_id
        return Path(tempfile.gettempdir()) / "mvp-staging" / self._key() / build_id

    def local_dir(self) -> Path:
        """A local folder for what is derived from the warehouse and read from a local disk
        (generated inputs, training caches): the root itself when it is local, else
        ~/.cache/mvp/<digest of the root's URL>, never inside the bucket."""
        if self.storage.is_local:
            return self.root
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvp" / \
            self._key()

    def _key(self) -> str:
        """A short name for this root in local folders shared by several warehouses."""
        return hashlib.sha256(self.storage.url().encode()).hexdigest()[:16]

    def manifest_path(self, version: int) -> str:
        """The file that records version `version` and its build's manifest."""
        return self.storage.url(self.log.manifest_name(version))

    def absolute(self, rel: str) -> str:
        return self.storage.url(rel)

    def relative(self, path: str | os.PathLike) -> str:
        if self.storage.is_local:
            return str(Path(path).relative_to(self.root))
        return str(path).removeprefix(self.storage.url() + "/")

    # ---- snapshots ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.storage.exists(log.FOLDER) or self.storage.exists(legacy.FOLDER)

    def current(self) -> Snapshot:
        """The newest committed snapshot; an empty one for a new warehouse. Raises BrokenChain
        if an entry it reads does not follow its parent (e.g. a stale copy put ahead of it)."""
        return self.log.head()

    def verify_chain(self, checkpoints: str = "all"):
        """Yield (version, data) of every commit file, oldest first, after checking its link to
        the one before (and every checkpoint, or only the newest); raises BrokenChain at the
        first fault, including a gap. Reads the whole history once."""
        return self.log.verify(checkpoints)

    def files(self, table: str, snapshot: Snapshot | None = None) -> list[str]:
        """Paths (URLs on an object store) of a table's parts; raises CorruptPart if one is
        missing or its size differs from the recorded one (one listing per folder; `mvp verify`
        checks the hashes)."""
        snap = snapshot or self.current()
        rels = snap.tables.get(table, [])
        found: dict[str, tuple[int, float]] = {}
        if len(rels) <= FEW_PARTS:  # e.g. what one commit added: no listing of the whole table
            found = {rel: (size, 0.0) for rel in rels
                     if (size := self.storage.size(rel)) is not None}
        else:
            for folder in {posixpath.dirname(rel) for rel in rels}:
                found.update(self.storage.listing(folder))
        for rel in rels:
            if rel not in found:
                raise CorruptPart(f"part {rel} of table {table} (snapshot {snap.version}) is "
                                  f"missing; run `mvp verify`")
            recorded = snap.parts.get(rel)  # parts from before records existed: None
            if recorded is not None and found[rel][0] != recorded["size"]:
                raise CorruptPart(f"part {rel} of table {table} (snapshot {snap.version}) is "
                                  f"{found[rel][0]} bytes, {recorded['size']} recorded; "
                                  f"run `mvp verify`")
        return [self.absolute(rel) for rel in rels]

    def dataset(self, table: str, schema, snapshot: Snapshot | None = None) -> ds.Dataset:
        """A pyarrow dataset over a table's parts, read through the storage's file system."""
        files = self.files(table, snapshot)
        if self.storage.is_local:
            return ds.dataset(files, schema=schema, format="parquet")
        return ds.dataset([self.storage.fs._strip_protocol(f) for f in files], schema=schema,
                          format="parquet", filesystem=self.storage.fs)

    def snapshot_at(self, version: int) -> Snapshot:
        """The snapshot as it was at `version` (its parts may since have been vacuumed)."""
        return self.log.at(version)

    def commit(self, parent: Snapshot, new_parts: dict[str, list[str]], build: dict,
               records: dict[str, dict] | None = None,
               removed: dict[str, list[str]] | None = None) -> Snapshot:
        """Commit parts already in place (paths relative to the root) as the version after
        `parent`, taking `removed` parts out of their tables. `records` gives part_record() of
        parts hashed earlier; the others are hashed here. Raises CommitConflict if another
        writer committed that version first."""
        records = dict(records or {})
        added = [rel for rels in new_parts.values() for rel in rels]
        for rel in added:
            if rel not in records:
                records[rel] = {"size": self.storage.size(rel), "sha256": self.storage.sha256(rel)}
        return self.log.append(parent, new_parts, {rel: records[rel] for rel in added}, build,
                               removed)

    # ---- writers -----------------------------------------------------------------------------
    @contextmanager
    def lock(self, timeout: float | None = None):
        """Exclusive writer lock on a local root for the duration of a build (released if the
        process dies); a no-op on object stores and with serialise_writers=False, since commits
        are safe without it. The holder notes who it is in the lock file; a writer that waits
        longer than `timeout` seconds (default $MVP_LOCK_TIMEOUT_S, else 600) gives up."""
        if not (self.storage.is_local and self.serialise_writers):
            yield
            return
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
        """A private local folder for one build's work in progress, marked live by a lock held
        for as long as the build runs; removed afterwards. A dead build's folder loses its lock,
        so `remove_orphans` can tell it from a running one."""
        folder = self.staging_dir(build_id)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".live", "w") as marker:
            fcntl.flock(marker, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def publish(self, staged: dict[str, list[Path]], build: dict, check=None,
                removed: dict[str, list[str]] | None = None) -> Snapshot:
        """Put finished part files from a local staging folder into their tables and commit them
        as the next version, taking the parts `removed` names out of their tables (a compaction
        replacing them; the publish is refused if one of them is no longer live). `check(snapshot)`,
        when given, runs before anything is uploaded and raises to refuse the publish (e.g. rows
        that another writer committed meanwhile); the files then stay staged. When another
        writer commits first, the checks run again on what it published, and the commit is
        retried (refused: the uploaded parts are deleted)."""
        removed = removed or {}

        def checks(snap: Snapshot) -> None:
            for table, rels in removed.items():
                if gone := set(rels) - set(snap.tables.get(table, [])):
                    raise WarehouseError(f"{len(gone)} parts of {table} this commit replaces "
                                         f"are no longer live (another compaction?)")
            if check is not None:
                check(snap)

        new_parts = {table: [f"tables/{table}/{Path(p).name}" for p in paths]
                     for table, paths in staged.items()}
        # hashed before any lock: staged files are private to this build
        records = {rel: part_record(path) for table, paths in staged.items()
                   for path, rel in zip(paths, new_parts[table])}
        with self.lock():
            snap, uploaded = self.current(), False
            for attempt in range(PUBLISH_ATTEMPTS):
                try:
                    checks(snap)
                except BaseException:
                    if uploaded:
                        self._delete(new_parts)
                    raise
                if not uploaded:
                    for table, paths in staged.items():
                        for path, rel in zip(paths, new_parts[table]):
                            self.storage.upload(path, rel)
                    uploaded = True
                    fault_point(f"{build.get('kind')}-after-upload")  # parts in, no commit yet
                try:
                    return self.commit(snap, new_parts, build, records, removed)
                except CommitConflict:
                    # jittered backoff, so racing writers do not collide again in lockstep
                    time.sleep(random.uniform(0, min(0.5, 0.005 * 2 ** attempt)))
                    snap = self.current()
            self._delete(new_parts)
        raise WarehouseError(f"other writers kept committing first: gave up after "
                             f"{PUBLISH_ATTEMPTS} attempts")

    def _delete(self, parts: dict[str, list[str]]) -> None:
        for rel in (rel for rels in parts.values() for rel in rels):
            self.storage.delete(rel)

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
        """Delete staging folders of dead builds, part files no commit references (the
        leftovers of builds killed midway) and parts a compaction replaced (a vacuum: time
        travel to versions before it then fails). A part is kept if any commit file present
        adds it, unless a commit removed it more than `grace_s` seconds ago; an unreferenced
        one only goes once it is older than `grace_s` seconds or its build is known dead.
        Refuses (BrokenChain) on a broken chain. Returns the number of parts deleted."""
        # every commit, not just the newest: a stale newest file must not free live parts
        live, replaced = set(), {}
        # parts come from the entries; of the checkpoints, readers start from the newest
        for version, data in self.verify_chain(checkpoints="newest"):
            live.update(p for parts in data.get("tables", {}).values() for p in parts)
            replaced.update((p, version) for parts in data.get("removed", {}).values()
                            for p in parts)
        staging_root = self.staging_dir("_").parent
        dead = [f for f in staging_root.iterdir() if not self._is_live(f)] \
            if staging_root.is_dir() else []
        for folder in dead:
            shutil.rmtree(folder, ignore_errors=True)
        dead_builds = {f.name for f in dead}
        removed, now = 0, time.time()
        listed = {**self.storage.listing("tables"), **self.storage.listing(log.FOLDER),
                  **self.storage.listing(legacy.FOLDER)}
        for rel, version in replaced.items():
            _, removed_at = listed.get(log.entry_name(version), (0, float("inf")))
            if now - removed_at >= grace_s:
                live.discard(rel)
        for rel, (_, mtime) in listed.items():
            name = posixpath.basename(rel)
            old = now - mtime >= grace_s
            if name.startswith(".tmp-"):  # a commit or upload killed midway
                if old:
                    self.storage.delete(rel)
                continue
            if not rel.startswith("tables/") or rel in live or not name.endswith(".parquet"):
                continue
            # parts are named <build id>[-<n>]: a dead build's parts cannot be committed later
            stem = name.removesuffix(".parquet")
            of_dead_build = any(stem == b or stem.startswith(b + "-") for b in dead_builds)
            if of_dead_build or old:
                self.storage.delete(rel)
                removed += 1
        return removed
