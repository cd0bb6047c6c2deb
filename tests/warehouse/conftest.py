"""A real S3-compatible server on 127.0.0.1 (moto's server mode) for tests of s3:// warehouses;
started once per session, on a free port, with fake credentials. s3fs (through botocore) finds it
by the AWS_ENDPOINT_URL the fixture sets, as a user's own endpoint would be found."""
import os
import uuid

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto S3 server on loopback, exported as AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket on the loopback server."""
    import boto3
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_root(s3_bucket):
    return f"s3://{s3_bucket}/wh"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh warehouse root: a local folder, or a prefix in a new bucket on the loopback S3
    server."""
    if request.param == "local":
        return str(tmp_path / "wh")
    return request.getfixturevalue("s3_root")
