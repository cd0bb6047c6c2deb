"""The commit log: a commit is one small file, `_log/<n:020d>.json`, created only if absent, that
holds what the commit adds (its new parts with their size and sha256, its build manifest) and a
link to its parent (version and sha256 of the parent entry's bytes). Every CHECKPOINT_EVERY
commits the committer also writes `_log/<n:020d>.builds.json`, the build manifests since the
previous checkpoint (warehouse/builds.py), `_log/<n:020d>.checkpoint.json`, the live parts at n
and the names of those segments, and then `_log/_last_checkpoint`, a hint naming it. A reader
starts from the newest checkpoint and follows entries n+1, n+2, ... until one is missing:
O(CHECKPOINT_EVERY) small files, whatever the history. A warehouse written before the log grows
its log from its newest `_snapshots/` file."""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterator

from warehouse import legacy
from warehouse.builds import Builds
from warehouse.schemas import TABLES
from warehouse.snapshot import (
    BrokenChain,
    CommitConflict,
    Snapshot,
    WarehouseError,
    check_link,
    parse,
    sha256,
)
from warehouse.storage import Storage

FOLDER = "_log"
HINT = f"{FOLDER}/_last_checkpoint"
CHECKPOINT_EVERY = 100
VERIFY_BATCH = 64  # log entries fetched at once when the whole log is read
_ENTRY, _CHECKPOINT, _SEGMENT = ".json", ".checkpoint.json", ".builds.json"


def entry_name(version: int) -> str:
    return f"{FOLDER}/{version:020d}{_ENTRY}"


def checkpoint_name(version: int) -> str:
    return f"{FOLDER}/{version:020d}{_CHECKPOINT}"


def segment_name(version: int) -> str:
    return f"{FOLDER}/{version:020d}{_SEGMENT}"


def _short(version: int) -> str:
    return f"{version:020d}{_ENTRY}"


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def _numbered(names: list[str], suffix: str) -> list[int]:
    return sorted(int(n[:-len(suffix)]) for n in names
                  if n.endswith(suffix) and n[:-len(suffix)].isdigit())


def _state(snap: Snapshot) -> dict:
    """What a checkpoint holds: the live parts, and the segments that hold every build manifest
    (all of them sealed); tables without parts are left out, so a table added to the schemas
    later does not make old checkpoints differ from their entries."""
    return {"version": snap.version, "parent": snap.parent, "entry_sha256": snap.digest,
            "tables": {t: ps for t, ps in snap.tables.items() if ps}, "parts": snap.parts,
            "build_segments": list(snap.builds.segments), "sealed_builds": snap.builds.sealed}


class CommitLog:
    def __init__(self, storage: Storage, checkpoint_every: int = CHECKPOINT_EVERY):
        self.storage, self.checkpoint_every = storage, checkpoint_every
        self._head: Snapshot | None = None  # the last head read or committed (a private copy)
        self._segments: dict[int, list[dict]] = {}

    # ---- reading ---------------------------------------------------------------------------
    def head(self) -> Snapshot:
        """The newest committed snapshot: the newest checkpoint plus the entries after it, each
        checked against its parent (BrokenChain if one does not follow). The head this log
        read or committed last is the start instead, once its entry is found unchanged: a
        long-running writer reads two objects per call, however far the last checkpoint is."""
        snap = self._known_head() or self._base()
        while (raw := self.storage.read(entry_name(snap.version + 1))) is not None:
            self._follow(snap, raw)
        self._remember(snap)
        return snap

    def _known_head(self) -> Snapshot | None:
        known, self._head = self._head, None
        if known is None:
            return None
        raw = self.storage.read(entry_name(known.version))
        if raw is None or sha256(raw) != known.digest:  # the warehouse was replaced or rewritten
            return None
        return known

    def _remember(self, snap: Snapshot) -> None:
        # a legacy base has no log entry to re-check it by
        self._head = snap.copy() if snap.version and snap.digest else None

    def at(self, version: int) -> Snapshot:
        """The snapshot as it was at `version` (time travel): the newest checkpoint at or before
        it plus the entries up to it. WarehouseError if the log does not reach that far."""
        snap = self._base(upto=version)
        while snap.version < version:
            raw = self.storage.read(entry_name(snap.version + 1))
            if raw is None:
                raise WarehouseError(f"version {version} is not in the log (it ends at "
                                     f"{snap.version})")
            self._follow(snap, raw)
        if snap.version != version:
            raise WarehouseError(f"version {version} is older than the log's base, "
                                 f"{snap.version}")
        return snap

    def _base(self, upto: int | None = None) -> Snapshot:
        for version in self._checkpoint_candidates():
            if upto is not None and version > upto:
                continue
            raw = self.storage.read(checkpoint_name(version))
            if raw is not None:
                data = parse(raw, f"checkpoint {checkpoint_name(version)}")
                if data.get("version") != version:
                    raise BrokenChain(f"checkpoint {checkpoint_name(version)} says it is version "
                                      f"{data.get('version')}: a stale or misplaced copy?")
                tables = {**{t: [] for t in TABLES}, **data["tables"]}
                builds = data["builds"] if "builds" in data else Builds(  # older checkpoints
                    (), data["build_segments"], data["sealed_builds"], self._segment)
                return Snapshot(version, tables, builds, data["parts"], data["parent"],
                                data["entry_sha256"])
        return legacy.newest(self.storage) or Snapshot.empty()

    def _segment(self, version: int) -> list[dict]:
        """The build manifests sealed by checkpoint `version` (read once per log)."""
        if version not in self._segments:
            name = segment_name(version)
            raw = self.storage.read(name)
            if raw is None:
                raise BrokenChain(f"build segment {name} named by a checkpoint is missing")
            data = parse(raw, f"build segment {name}", key="builds", kind=list)
            if data.get("version") != version:
                raise BrokenChain(f"build segment {name} says it is version "
                                  f"{data.get('version')}: a stale or misplaced copy?")
            self._segments[version] = data["builds"]
        return self._segments[version]

    def _checkpoint_candidates(self) -> Iterator[int]:
        hint = self.storage.read(HINT)
        if hint is not None and hint.strip().isdigit():
            yield int(hint)
        # no hint, or it names a checkpoint that is gone: list them (at most K entries if none)
        yield from reversed(_numbered(self.storage.names(FOLDER), _CHECKPOINT))

    def _follow(self, snap: Snapshot, raw: bytes) -> dict:
        """Check the entry after `snap` and apply it to `snap` in place; its data."""
        version = snap.version + 1
        data = parse(raw, f"log entry {_short(version)}")
        if not isinstance(data.get("parts"), dict) or not isinstance(data.get("build"), dict):
            raise WarehouseError(f"log entry {_short(version)} is unreadable: not a log entry")
        # a log entry always carries a link, whatever the base it follows
        parent = None if snap.version == 0 else ({"parent": snap.parent}, snap.digest)
        check_link(f"log entry {_short(version)}", _short(version - 1), version, data, parent)
        snap.apply(data, sha256(raw))
        return data

    def verify(self, checkpoints: str = "all") -> Iterator[tuple[int, dict]]:
        """Yield (version, data) of every commit file, legacy snapshots first, oldest first, after
        checking its link to the one before and that no entry is missing; each checkpoint
        (`checkpoints="all"`), or the newest, the one readers start from ("newest"), must equal
        the state its entries add up to. Raises BrokenChain at the first fault. Entries are
        fetched VERIFY_BATCH at a time, concurrently on object stores."""
        last = None
        for version, data, raw in legacy.chain(self.storage):
            yield version, data
            last = (data, raw)
        snap = legacy.to_snapshot(*last) if last else Snapshot.empty()
        names = self.storage.names(FOLDER)
        entries = _numbered(names, _ENTRY)
        checkpointed = set(_numbered(names, _CHECKPOINT))
        checked = checkpointed if checkpoints == "all" else set(sorted(checkpointed)[-1:])
        if entries and entries[0] <= snap.version:  # e.g. a legacy file restored late
            raise BrokenChain(f"log entry {_short(entries[0])} and snapshot "
                              f"{legacy.name(entries[0])} both claim version {entries[0]}")
        for expected, version in enumerate(entries, start=snap.version + 1):
            if version != expected:
                raise BrokenChain(f"log entry {_short(version)}: its parent "
                                  f"{_short(version - 1)} is missing")
        for start in range(0, len(entries), VERIFY_BATCH):
            batch = entries[start:start + VERIFY_BATCH]
            for version, raw in zip(batch, self.storage.read_many(
                    [entry_name(v) for v in batch])):
                if raw is None:
                    raise BrokenChain(f"log entry {_short(version)} vanished while it was read")
                yield version, self._follow(snap, raw)
                if version in checked:
                    self._check_checkpoint(snap)
        if stray := sorted(checkpointed - set(entries)):
            raise BrokenChain(f"checkpoint {checkpoint_name(stray[0])} has no log entry")

    def _check_checkpoint(self, snap: Snapshot) -> None:
        """The checkpoint at `snap.version` must hold the state its entries add up to, and its
        segments every manifest up to it."""
        name = checkpoint_name(snap.version)
        data = parse(self.storage.read(name), f"checkpoint {name}")
        state = json.loads(_encode(_state(snap)))
        if "builds" in data:  # an older checkpoint, with every manifest inline
            state = {k: v for k, v in state.items() if k not in ("build_segments",
                                                                 "sealed_builds")}
            state["builds"] = list(snap.builds)
        else:
            segments = data.get("build_segments") or []
            state.update(build_segments=segments, sealed_builds=len(snap.builds))
            held = [b for version in segments for b in self._segment(version)]
            if json.loads(json.dumps(held)) != json.loads(json.dumps(list(snap.builds))):
                raise BrokenChain(f"the build segments of checkpoint {name} differ from the "
                                  f"log entries up to it")
        if data != state:
            raise BrokenChain(f"checkpoint {name} differs from the log entries up to it")

    # ---- writing ---------------------------------------------------------------------------
    def append(self, parent: Snapshot, new_parts: dict[str, list[str]], records: dict[str, dict],
               build: dict, removed: dict[str, list[str]] | None = None) -> Snapshot:
        """Commit the next version after `parent`: create its entry unless another writer did
        (CommitConflict). It adds `new_parts` and takes `removed` parts out of their tables (a
        compaction). Every `checkpoint_every` versions, also write a checkpoint."""
        version = parent.version + 1
        # the manifest records the version it is published as (`mvp history`, ingest reruns)
        entry = {"version": version, "parent": parent.link(),
                 "tables": {t: list(ps) for t, ps in new_parts.items() if ps},
                 "parts": records, "build": {**build, "snapshot": version}}
        if removed := {t: list(ps) for t, ps in (removed or {}).items() if ps}:
            entry["removed"] = removed
        raw = _encode(entry)
        if not self.storage.put_if_absent(entry_name(version), raw):
            raise CommitConflict(f"snapshot {version} was committed by another writer")
        snap = parent.copy()
        snap.apply(entry, sha256(raw))
        if version % self.checkpoint_every == 0:
            self._write_checkpoint(snap)
        self._remember(snap)
        return snap

    def _write_checkpoint(self, snap: Snapshot) -> None:
        # the commit already stands: a checkpoint that fails to write only makes reads longer
        try:
            self.storage.write(segment_name(snap.version), _encode(
                {"version": snap.version, "builds": snap.builds.unsealed()}))
            sealed = snap.builds.seal(snap.version)
            self.storage.write(checkpoint_name(snap.version),
                               _encode(_state(Snapshot(snap.version, snap.tables, sealed,
                                                       snap.parts, snap.parent, snap.digest))))
            self.storage.write(HINT, str(snap.version).encode())
            snap.builds = sealed
        except OSError as e:
            warnings.warn(f"checkpoint {snap.version} not written ({e}); readers follow more "
                          f"log entries until the next one", stacklevel=3)

    def manifest_name(self, version: int) -> str:
        """The file that records version `version`'s build (relative to the root)."""
        if version > 0 and not self.storage.exists(entry_name(version)) \
                and self.storage.exists(legacy.name(version)):
            return legacy.name(version)
        return entry_name(version)
