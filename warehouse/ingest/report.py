"""What one ingest did: rows read, and each one's outcome (new, already present, rejected), per
table and reason; and the total of the partitions of a partitioned ingest."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IngestReport:
    dataset: str
    ingest_id: str
    snapshot: int
    skipped: bool                     # True when this exact input was already ingested
    read: int = 0
    new: int = 0
    existing: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    tables: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    merges: int = 0                   # more than 1: another writer published first
    partitions: list[IngestReport] = field(default_factory=list)  # of a partitioned ingest

    @property
    def balanced(self) -> bool:
        return self.read == self.new + self.existing + self.rejected

    def summary(self) -> str:
        if self.skipped:
            return (f"{self.dataset}: input already ingested (snapshot {self.snapshot}); "
                    "nothing to do")
        lines = [f"{self.dataset}: read {self.read} = accepted {self.new + self.existing} "
                 f"(new {self.new}, already present {self.existing}) + rejected {self.rejected}"
                 f"  [{'balanced' if self.balanced else 'UNBALANCED'}]  "
                 f"snapshot {self.snapshot}, {self.seconds:.1f}s"]
        for table, t in self.tables.items():
            lines.append(f"  {table:<10} new {t['new']:>9}  present {t['existing']:>9}  "
                         f"rejected {sum(t['rejected'].values()):>7}")
        for reason, n in sorted(self.rejected_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  rejected {n:>7}  {reason}")
        for k, part in enumerate(self.partitions):
            lines.append(f"  partition {k + 1} of {len(self.partitions)}: " + (
                f"already ingested (snapshot {part.snapshot})" if part.skipped else
                f"read {part.read} = accepted {part.new + part.existing} + rejected "
                f"{part.rejected}, snapshot {part.snapshot}, merged {part.merges}x, "
                f"{part.seconds:.1f}s"))
        return "\n".join(lines)


def total(reports: list[IngestReport], seconds: float) -> IngestReport:
    """One report for the partitions of one ingest: their counts added up, so read = accepted +
    rejected holds for it as for each; its snapshot is the last one they published."""
    out = IngestReport(reports[0].dataset, ",".join(r.ingest_id for r in reports if r.ingest_id),
                       snapshot=max(r.snapshot for r in reports),
                       skipped=all(r.skipped for r in reports), seconds=seconds,
                       partitions=reports)
    for r in reports:
        out.read += r.read
        out.new += r.new
        out.existing += r.existing
        out.rejected += r.rejected
        out.merges += r.merges
        _add(out.rejected_by_reason, r.rejected_by_reason)
        for table, t in r.tables.items():
            into = out.tables.setdefault(table, {"staged": 0, "new": 0, "existing": 0,
                                                 "rejected": {}})
            for key in ("staged", "new", "existing"):
                into[key] += t[key]
            _add(into["rejected"], t["rejected"])
    return out


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n
