"""The build manifests of a snapshot, oldest first. Checkpoints do not repeat them: a checkpoint
writes the manifests since the one before into a segment file of its own and names the segments,
so its size follows the live parts, not the history. A snapshot read from a checkpoint loads the
segments only when a caller asks for manifests older than it (`mvp history`, an ingest's "was
this input done?"); a writer's checks read only the recent ones."""
from __future__ import annotations

from collections import UserList
from collections.abc import Callable, Iterable


class Builds(UserList):
    """A list of manifests whose first `sealed` items live in the segment files numbered
    `segments`, read by `load(version)` when first needed; the rest are held in memory."""

    def __init__(self, recent: Iterable[dict] = (), segments: Iterable[int] = (),
                 sealed: int = 0, load: Callable[[int], list[dict]] | None = None):
        self.segments, self.sealed, self._load = tuple(segments), sealed, load
        self._recent = list(recent)
        self._all = None if self.segments else self._recent

    @property
    def data(self) -> list[dict]:
        if self._all is None:
            older = [b for version in self.segments for b in self._load(version)]
            if len(older) != self.sealed:
                raise ValueError(f"build segments {list(self.segments)} hold {len(older)} "
                                 f"manifests, the checkpoint counted {self.sealed}")
            self._all = older + self._recent
        return self._all

    @data.setter
    def data(self, value: list[dict]) -> None:  # UserList's own methods assign it
        self._all = value

    def __len__(self) -> int:
        return self.sealed + len(self._recent) if self._all is None else len(self._all)

    def append(self, build: dict) -> None:
        (self._recent if self._all is None else self._all).append(build)

    def after(self, n: int) -> list[dict]:
        """The manifests after the first `n`, read from segments only if they are needed."""
        if self._all is None and n >= self.sealed:
            return self._recent[n - self.sealed:]
        return self.data[n:]

    def unsealed(self) -> list[dict]:
        """The manifests no segment holds yet: the next segment's contents."""
        return self.after(self.sealed)

    def copy(self) -> Builds:
        twin = Builds(self.unsealed(), self.segments, self.sealed, self._load)
        if self._all is not None:
            twin._all = list(self._all)
        return twin

    def seal(self, version: int) -> Builds:
        """These manifests after the unsealed ones were written as segment `version`."""
        sealed = Builds((), (*self.segments, version), len(self), self._load)
        sealed._all = None if self._all is None else list(self._all)
        return sealed
