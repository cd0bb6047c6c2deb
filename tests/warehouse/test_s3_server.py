"""The loopback S3 server behaves like S3 where commits depend on it: a PutObject with
If-None-Match: * to a key that exists fails with 412 PreconditionFailed and leaves the first
object as it was; s3fs's exclusive write reports it as FileExistsError."""
import boto3
import pytest
import s3fs
from botocore.exceptions import ClientError

from warehouse.storage import open_storage


def test_a_conditional_put_on_an_existing_key_fails_with_412(s3_server, s3_bucket):
    client = boto3.client("s3", endpoint_url=s3_server)
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"second", IfNoneMatch="*")
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert error["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"first"
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"third")  # unconditional: replaces
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"third"


def test_s3fs_exclusive_writes_raise_file_exists(s3_server, s3_bucket):
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.pipe_file(f"{s3_bucket}/k", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{s3_bucket}/k", b"second", mode="create")
    assert fs.cat_file(f"{s3_bucket}/k") == b"first"


def test_put_if_absent_on_an_s3_root(s3_server, s3_root):
    storage = open_storage(s3_root)  # the endpoint comes from AWS_ENDPOINT_URL
    assert storage.put_if_absent("_log/x.json", b"first")
    assert not storage.put_if_absent("_log/x.json", b"second")
    assert storage.read("_log/x.json") == b"first"
    assert storage.url("_log/x.json") == f"{s3_root}/_log/x.json"
    assert open_storage(s3_root, {"endpoint_url": s3_server}).read("_log/x.json") == b"first"


def test_listings_see_what_other_writers_put(s3_server, s3_bucket, s3_root):
    """Another process's commits and parts must not hide behind a cached listing."""
    storage = open_storage(s3_root)
    storage.write("_log/a.json", b"1")
    assert storage.names("_log") == ["a.json"] and list(storage.listing("_log")) == ["_log/a.json"]
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=s3_bucket, Key="wh/_log/b.json",
                                                          Body=b"22")
    assert sorted(storage.names("_log")) == ["a.json", "b.json"]
    assert sorted(storage.listing("_log")) == ["_log/a.json", "_log/b.json"]
    assert storage.size("_log/b.json") == 2


class _CreateIgnoringFileSystem:
    """An object store whose client drops the create condition: every write replaces."""

    def __init__(self):
        from fsspec.implementations.memory import MemoryFileSystem
        self.inner = MemoryFileSystem(skip_instance_cache=True)
        self.inner.store.clear()

    def pipe_file(self, path, data, mode="overwrite"):
        self.inner.pipe_file(path, data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_store_that_does_not_refuse_a_second_create_gets_no_commit():
    from warehouse.storage import PROBE_FOLDER, Storage
    storage = Storage(_CreateIgnoringFileSystem(), "/bucket/wh")
    with pytest.raises(OSError, match="does not refuse a second create"):
        storage.put_if_absent("_log/00000000000000000001.json", b"{}")
    assert storage.read("_log/00000000000000000001.json") is None
    assert not storage.fs.inner.find(f"/bucket/wh/{PROBE_FOLDER}")  # the probe cleaned up


def test_the_loopback_server_passes_the_probe_once_per_root(s3_root):
    storage = open_storage(s3_root)
    assert storage.put_if_absent("a", b"1") and not storage.put_if_absent("a", b"2")
    assert storage._create_checked and storage.read("a") == b"1"
