"""Fixtures for the data tests: small shard sets whose samples carry their own id, on the loopback S3 server."""

import numpy as np
import pytest
import torch

from ect_scale.data.convert import PixelConverter
from ect_scale.data.images import ArraySource
from ect_scale.data.shard_writer import WriterOptions, write_shards


@pytest.fixture(autouse=True)
def _s3_environment(s3_server):
    """Start the S3 server (and set AWS_* in os.environ) before any DataLoader worker or forkserver starts, so that
    worker processes inherit the endpoint and credentials."""
    yield


def id_images(n: int) -> np.ndarray:
    """[n,8,8,3] uint8 images whose first pixel encodes the image id (R = id % 256, G = id // 256)."""
    images = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    images[:, 1:, :, 2] = 77
    return images


def ids_of(raw: torch.Tensor) -> list[int]:
    """Image ids of a uint8 [N,3,8,8] batch made from `id_images`."""
    return (raw[:, 0, 0, 0].long() + 256 * raw[:, 1, 0, 0].long()).tolist()


def write_id_shards(url: str, n: int = 192, num_shards: int = 16, **opts) -> dict:
    """Write `n` id images (label = id % 10) as `num_shards` pixel shards to `url`; returns the manifest dict."""
    source = ArraySource(id_images(n), [i % 10 for i in range(n)])
    options = WriterOptions(resolution=8, num_shards=num_shards, progress_s=1e9, **opts)
    return write_shards(source, url, PixelConverter(), options, log=lambda *_: None)


@pytest.fixture(scope="module")
def id_shards(s3_server):
    """192 id samples in 16 shards of 12 at s3://<bucket>/ids, shared by a test module (do not modify)."""
    import uuid

    import s3fs

    bucket = f"ids-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True).mkdir(bucket)
    write_id_shards(f"s3://{bucket}/ids")
    yield f"s3://{bucket}/ids"


@pytest.fixture
def fresh_id_shards(s3_bucket):
    """Like `id_shards`, in a fresh bucket that the test may damage."""
    write_id_shards(f"{s3_bucket}/ids")
    yield f"{s3_bucket}/ids"
