"""Where a warehouse's files live: a local folder or an object-store prefix (s3://, gs://, az://)
behind fsspec. Every backend offers the same small set of operations on paths relative to the
root; the one that makes commits safe, `put_if_absent`, has one implementation per backend."""
from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROBE_FOLDER = "_log/.create-probe"  # where an object store's exclusive create is tried once


class Storage:
    """An object-store prefix: every write is a whole-object PUT, so nothing is ever seen half
    written, and there is no rename, link or lock."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str):
        self.fs, self.root = fs, root.rstrip("/")
        self._create_checked = False

    @property
    def is_local(self) -> bool:
        return False

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def url(self, rel: str = "") -> str:
        """The address of `rel` that fsspec (and a person) can open."""
        return self.fs.unstrip_protocol(self.path(rel) if rel else self.root)

    def read(self, rel: str) -> bytes | None:
        """The object's bytes; None if there is none."""
        # s3fs asks for the size first (a HEAD, and a LIST when it is missing) to split large
        # objects into concurrent ranges; log files are small: one GET
        options = {"max_concurrency": 1} if getattr(self.fs, "max_concurrency", 1) > 1 else {}
        try:
            return self.fs.cat_file(self.path(rel), **options)
        except FileNotFoundError:
            return None

    def read_many(self, rels: list[str]) -> list[bytes | None]:
        """Several objects' bytes (None where there is none), fetched concurrently."""
        if not rels:
            return []
        paths = [self.path(rel) for rel in rels]
        found = self.fs.cat(paths, on_error="return")
        out = []
        for path in paths:
            value = found.get(self.fs._strip_protocol(path), found.get(path))
            if isinstance(value, FileNotFoundError):
                value = None
            elif isinstance(value, BaseException):
                raise value
            out.append(value)
        return out

    def put_if_absent(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` unless it exists; False if it did (another writer got
        there first). The server checks it: S3's PutObject with If-None-Match: *, GCS's
        ifGenerationMatch=0 (gcsfs), Azure's If-None-Match: * (adlfs), all behind fsspec's
        mode="create"."""
        if not self._create_checked:
            self._check_exclusive_create()
        return self._create(rel, data)

    def _create(self, rel: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self.path(rel), data, mode="create")
            return True
        except FileExistsError:
            return False

    def _check_exclusive_create(self) -> None:
        """Refuse to commit to a store that does not refuse a second create of one name (a
        server without conditional writes, or a client that drops them): two writers could
        then both commit the same version. Probed once per root and process."""
        probe = f"{PROBE_FOLDER}/{uuid.uuid4().hex}"
        try:
            first, second = self._create(probe, b"1"), self._create(probe, b"2")
        finally:
            self.delete(probe)
        if not (first and not second):
            raise OSError(f"{self.url()} does not refuse a second create of one object "
                          f"(fsspec mode='create' via {type(self.fs).__name__}): commits there "
                          f"would not be safe with several writers")
        self._create_checked = True

    def write(self, rel: str, data: bytes) -> None:
        """Create or replace `rel`; readers see the old bytes or the new ones."""
        self.fs.pipe_file(self.path(rel), data)

    def upload(self, local_path: str | os.PathLike, rel: str) -> None:
        """Put a local file (a staged part) at `rel`; the local file stays."""
        self.fs.put_file(str(local_path), self.path(rel))

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def names(self, rel_dir: str) -> list[str]:
        """Names of the files directly in a folder; empty if it does not exist."""
        try:
            listing = self.fs.ls(self.path(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        return [posixpath.basename(i["name"]) for i in listing if i["type"] == "file"]

    def listing(self, rel_dir: str) -> dict[str, tuple[int, float]]:
        """Every file under a folder: relative path -> (size, modification time, epoch s)."""
        try:
            found = self.fs.find(self.path(rel_dir), detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.fs._strip_protocol(self.root) + "/"
        return {name.removeprefix(prefix): (info["size"], _mtime(info))
                for name, info in found.items()}

    def size(self, rel: str) -> int | None:
        try:
            return self.fs.size(self.path(rel))
        except FileNotFoundError:
            return None

    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(self.path(rel), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


class LocalStorage(Storage):
    """A local folder (or any POSIX file system with hard links): creates are links of fsynced
    temporary files and replacements are renames, so no reader sees a half-written file."""

    @property
    def is_local(self) -> bool:
        return True

    def url(self, rel: str = "") -> str:
        return self.path(rel) if rel else self.root

    def _temp_copy(self, rel: str, data: bytes) -> str:
        """A fsynced temporary file holding `data` next to `rel`, named .tmp-* (cleanup knows)."""
        folder = os.path.dirname(self.path(rel))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def put_if_absent(self, rel: str, data: bytes) -> bool:
        # os.link fails on a taken name on every POSIX file system: nothing to probe
        tmp = self._temp_copy(rel, data)
        try:
            os.link(tmp, self.path(rel))  # exclusive: fails if the name is taken
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def write(self, rel: str, data: bytes) -> None:
        os.replace(self._temp_copy(rel, data), self.path(rel))

    def read_many(self, rels: list[str]) -> list[bytes | None]:
        return [self.read(rel) for rel in rels]

    def upload(self, local_path: str | os.PathLike, rel: str) -> None:
        target = self.path(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{os.path.dirname(target)}/.tmp-{uuid.uuid4().hex}"
        try:
            os.link(local_path, tmp)  # staging lives under the root: no copy
        except OSError:
            self.fs.cp_file(str(local_path), tmp)
        os.replace(tmp, target)

    def listing(self, rel_dir: str) -> dict[str, tuple[int, float]]:
        out = {}
        for folder, _, files in os.walk(self.path(rel_dir)):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:  # removed while listing
                    continue
                out[os.path.relpath(path, self.root)] = (st.st_size, st.st_mtime)
        return out

    def names(self, rel_dir: str) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.path(rel_dir)) if e.is_file()]
        except FileNotFoundError:
            return []


def _mtime(info: dict) -> float:
    """Modification time from an fsspec info dict (local: mtime; S3: LastModified; GCS: updated;
    Azure: last_modified)."""
    for key in ("mtime", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if value is not None:
            return value.timestamp() if hasattr(value, "timestamp") else float(value)
    return float("inf")  # unknown age: never old enough for cleanup to take it


def open_storage(root: str, storage_options: dict | None = None) -> Storage:
    """The backend for a root: a local path or file:// URL, or an fsspec URL such as
    s3://bucket/prefix (its credentials and endpoint from `storage_options` or the environment,
    e.g. AWS_ENDPOINT_URL)."""
    options = dict(storage_options or {})
    if fsspec.utils.get_protocol(root) not in ("file", "local"):
        # other writers change the store: a cached listing would hide their commits and parts
        options.setdefault("use_listings_cache", False)
    fs, path = fsspec.core.url_to_fs(root, **options)
    if isinstance(fs, LocalFileSystem):
        return LocalStorage(fs, os.path.realpath(os.path.expanduser(path)))
    return Storage(fs, path)
