"""`mvp verify`: check the commit chain and every part of the current snapshot against what
its commit recorded (the file exists, its size and its sha256)."""
from __future__ import annotations

from dataclasses import dataclass, field

from warehouse.store import BrokenChain, Warehouse, WarehouseError


@dataclass
class VerifyReport:
    version: int = 0
    chain_error: str | None = None
    ok: int = 0
    bad: list[tuple[str, str, str]] = field(default_factory=list)   # (table, part, problem)
    unverified: list[tuple[str, str]] = field(default_factory=list)  # parts without a record

    @property
    def passed(self) -> bool:
        return self.chain_error is None and not self.bad

    def lines(self) -> list[str]:
        if self.chain_error:
            return [f"BROKEN CHAIN {self.chain_error}"]
        out = [f"BAD {table} {part}: {problem}" for table, part, problem in self.bad]
        out += [f"UNVERIFIED {table} {part}: no recorded size or sha256 (written by older code)"
                for table, part in self.unverified]
        tables = sorted({t for t, _, _ in self.bad})
        out.append(f"snapshot {self.version}: {self.ok} parts ok, {len(self.bad)} bad"
                   + (f" (tables: {', '.join(tables)})" if tables else "")
                   + f", {len(self.unverified)} unverified")
        return out


def verify(warehouse: str | Warehouse) -> VerifyReport:
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    if not wh.exists():
        raise WarehouseError(f"no warehouse at {wh.root}")
    try:
        for _ in wh.verify_chain():  # every link, not only the newest one
            pass
        snap = wh.current()
    except BrokenChain as e:
        return VerifyReport(chain_error=str(e))
    report = VerifyReport(version=snap.version)
    for table, parts in snap.tables.items():
        for rel in parts:
            size, recorded = wh.storage.size(rel), snap.parts.get(rel)
            if size is None:
                report.bad.append((table, rel, "missing"))
            elif recorded is None:
                report.unverified.append((table, rel))
            elif size != recorded["size"]:
                report.bad.append((table, rel, f"{size} bytes, {recorded['size']} recorded"))
            elif wh.storage.sha256(rel) != recorded["sha256"]:
                report.bad.append((table, rel, "sha256 differs from the recorded one"))
            else:
                report.ok += 1
    return report
