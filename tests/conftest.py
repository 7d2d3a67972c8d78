"""Shared fixtures: processes a test starts, and for the object-storage tests moto's S3 server
on loopback and a bucket per test."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from _workers import STORAGE_ENV

from usage_analytics import Store

SERVER = Path(__file__).with_name("_s3_server.py")
#: moto accepts any credentials; these are what the tests' clients send.
CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclasses.dataclass(frozen=True)
class Remote:
    """A dataset URL on object storage and the storage options that open it."""

    url: str
    options: dict[str, Any]

    def store(self, **kwargs: Any) -> Store:
        return Store(self.url, storage_options=self.options, **kwargs)

    @property
    def fs(self) -> Any:
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.options)[0]

    def sub(self, name: str) -> Remote:
        return Remote(f"{self.url.rsplit('/', 1)[0]}/{name}", self.options)


@pytest.fixture
def procs() -> Iterator[list[BaseProcess]]:
    """Processes started by a test; any still alive at teardown are killed."""
    started: list[BaseProcess] = []
    yield started
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of an S3-compatible server (moto's) on loopback, for the whole session."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"moto's S3 server did not start: {line}{err[-2000:]}")
    try:
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def new_bucket(endpoint: str) -> str:
    """Create an empty bucket on the server at ``endpoint``; returns its name."""
    import boto3

    name = f"ua-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["key"],
        aws_secret_access_key=CREDENTIALS["secret"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Remote:
    """``s3://<a new bucket>/usage``; the worker processes a test starts open it too."""
    options = {"endpoint_url": s3_endpoint, **CREDENTIALS}
    monkeypatch.setenv(STORAGE_ENV, json.dumps(options))
    return Remote(f"s3://{new_bucket(s3_endpoint)}/usage", options)


@pytest.fixture
def memory() -> Iterator[Remote]:
    """A dataset URL on fsspec's in-process memory filesystem, removed afterwards."""
    import fsspec

    remote = Remote(f"memory://ua-{uuid.uuid4().hex[:16]}/usage", {})
    yield remote
    fs = fsspec.filesystem("memory")
    if fs.exists(remote.url):
        fs.rm(remote.url, recursive=True)
