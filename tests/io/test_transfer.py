"""Downloads from a real S3 server through a network that breaks: retried, verified, never partial."""

import os
from pathlib import Path

import numpy as np
import pytest
import s3fs

from sleepsound.io.transfer import RetryPolicy, download
from tests.flaky_s3 import FlakyS3Proxy

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture(scope="module")
def s3_object(s3_endpoint) -> tuple[str, bytes]:
    data = np.random.default_rng(0).bytes(3 << 20)
    fs = s3fs.S3FileSystem()
    if not fs.exists("transfer-tests"):
        fs.mkdir("transfer-tests")
    fs.pipe_file("transfer-tests/night[001].edf", data)
    return "s3://transfer-tests/night[001].edf", data


@pytest.fixture
def via(monkeypatch, s3_endpoint):
    """Route s3fs through a flaky proxy for one test."""

    def route(mode: str, failures: int) -> FlakyS3Proxy:
        proxy = FlakyS3Proxy(s3_endpoint, mode, failures)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        return proxy

    yield route
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("mode", ["truncate", "corrupt"])
def test_damaged_transfers_are_retried_until_whole(s3_object, via, tmp_path, mode):
    uri, data = s3_object
    with via(mode, failures=2) as proxy:
        local = download(uri, str(tmp_path / "night.edf"), FAST, seed=0)
    assert proxy.damaged == 2
    assert Path(local).read_bytes() == data
    assert os.listdir(tmp_path) == ["night.edf"]  # no .part left behind


def test_a_network_that_never_recovers_leaves_nothing(s3_object, via, tmp_path):
    uri, _ = s3_object
    with via("corrupt", failures=100), pytest.raises(OSError, match=r"transfer-tests/night\[001\]\.edf"):
        download(uri, str(tmp_path / "night.edf"), FAST, seed=0)
    assert os.listdir(tmp_path) == []


def test_a_missing_object_fails_at_once(s3_endpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-night"):
        download("s3://transfer-tests/no-such-night.edf", str(tmp_path / "x.edf"), FAST)
