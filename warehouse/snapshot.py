"""What a warehouse version is (a Snapshot: every table's live parts, their records and every
build's manifest), the errors a warehouse raises, and the check that a commit follows its parent."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from warehouse.builds import Builds
from warehouse.schemas import TABLES


class WarehouseError(RuntimeError):
    """A warehouse cannot be read or written as asked; the message says why."""


class BrokenChain(WarehouseError):
    """A commit does not follow its parent: a stale copy, a gap or an edited file. Nothing is
    read from or written to the warehouse until the files are repaired."""


class CorruptPart(WarehouseError):
    """A part file is missing or differs from what its snapshot recorded."""


class CommitConflict(WarehouseError):
    """Another writer committed this version first: re-read, re-check and retry."""


@dataclass
class Snapshot:
    version: int
    tables: dict[str, list[str]]                 # table -> part paths relative to the root
    builds: Builds = field(default_factory=Builds)  # manifests of every build, oldest first
    parts: dict[str, dict] = field(default_factory=dict)  # part path -> {"size", "sha256"}
    parent: dict | None = None                   # {"version", "sha256" of the parent's file}
    digest: str | None = None                    # sha256 of this version's commit file

    def __post_init__(self):
        if not isinstance(self.builds, Builds):
            self.builds = Builds(self.builds)

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(0, {t: [] for t in TABLES})

    def copy(self) -> Snapshot:
        return Snapshot(self.version, {t: list(p) for t, p in self.tables.items()},
                        self.builds.copy(), dict(self.parts), self.parent, self.digest)

    def since(self, base: Snapshot) -> Snapshot:
        """What the commits after `base` (an earlier version of this warehouse) added: a
        snapshot holding only their parts and builds, so a check against other writers reads
        what they published, not the whole history."""
        before = {t: set(ps) for t, ps in base.tables.items()}
        tables = {t: [p for p in ps if p not in before.get(t, ())] for t, ps in self.tables.items()}
        return Snapshot(self.version, tables, self.builds.after(len(base.builds)), self.parts,
                        self.parent, self.digest)

    def link(self) -> dict | None:
        """What the next commit records as its parent."""
        return {"version": self.version, "sha256": self.digest} if self.version else None

    def apply(self, entry: dict, digest: str) -> None:
        """Advance this snapshot in place by one commit-log entry: the parts it removes (a
        compaction's inputs), then the parts it adds."""
        for table, parts in entry.get("removed", {}).items():
            gone = set(parts)
            self.tables[table] = [p for p in self.tables.get(table, []) if p not in gone]
            for part in gone:
                self.parts.pop(part, None)
        for table, parts in entry["tables"].items():
            self.tables.setdefault(table, []).extend(parts)
        self.parts.update(entry["parts"])
        self.builds.append(entry["build"])
        self.version, self.parent, self.digest = entry["version"], entry["parent"], digest


def parse(raw: bytes, name: str, key: str = "tables", kind: type = dict) -> dict:
    """A commit file's JSON object, whose `key` holds a `kind`; WarehouseError if it is not
    one."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise WarehouseError(f"{name} is unreadable: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get(key), kind):
        raise WarehouseError(f"{name} is unreadable: no {key!r} {kind.__name__} in it")
    return data


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def check_link(name: str, parent_name: str, version: int, data: dict,
               parent: tuple[dict, str] | None) -> None:
    """Refuse the commit file `name` (number `version`) unless it follows `parent` (data and
    sha256 of the file numbered version - 1, None if there is none)."""
    if data.get("version") != version:  # a copy of another commit under this number
        raise BrokenChain(f"{name} says it is version {data.get('version')}: "
                          f"a stale or misplaced copy?")
    if version > 1 and parent is None:
        raise BrokenChain(f"{name}: its parent {parent_name} is missing")
    if "parent" not in data:  # written before snapshots were chained: only at the start
        if parent is not None and "parent" in parent[0]:
            raise BrokenChain(f"{name} has no parent link but follows a linked snapshot")
        return
    expected = None if version == 1 else {"version": version - 1, "sha256": parent[1]}
    if data["parent"] != expected:
        raise BrokenChain(f"{name} does not follow {parent_name} (its parent link does not "
                          f"match that file): a stale copy or an edited file?")
