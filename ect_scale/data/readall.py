"""A whole (small) shard dataset in memory, in manifest order: for tools that need every sample at once, such as
the quickstart's digit classifier and its reference statistics. Training streams with `build_train_stream`."""

from __future__ import annotations

from typing import Optional

import numpy as np
from webdataset import gopen
from webdataset.tariterators import tar_file_iterator

from ect_scale.data.loader import group_by_key, npy_header
from ect_scale.data.manifest import LABEL_EXT, RAW_EXT, Manifest, load_manifest
from ect_scale.data.storage import StorageOptions


def read_dataset(
    url: str, options: Optional[StorageOptions] = None, max_samples: int = 1_000_000
) -> tuple[np.ndarray, np.ndarray, Manifest]:
    """(raw [N, ...] in the manifest's dtype, labels int64 [N], manifest) of every sample of a shard dataset.

    Refuses datasets over `max_samples` (this holds everything in memory). A damaged shard raises: a tool that
    measures a dataset must see all of it."""
    options = (options or StorageOptions()).resolved()
    manifest = load_manifest(url, options.fast_fail())
    if manifest.num_samples > max_samples:
        raise ValueError(
            f"{url}: {manifest.num_samples:,} samples is more than read_dataset holds in memory "
            f"({max_samples:,}). Fix: use a smaller dataset, or stream it with build_train_stream"
        )
    raws, labels = [], []
    for i in range(len(manifest.shards)):
        shard_url = manifest.shard_url(i)
        with gopen(shard_url, "rb") as stream:
            for key, files in group_by_key(tar_file_iterator(stream)):
                if RAW_EXT not in files or LABEL_EXT not in files:
                    raise ValueError(
                        f"{shard_url}: sample {key} lacks .{RAW_EXT} or .{LABEL_EXT}. Fix: re-write the "
                        "shard with tools/make_shards.py"
                    )
                shape, dtype, offset = npy_header(files[RAW_EXT])
                raws.append(np.frombuffer(files[RAW_EXT], dtype=dtype, offset=offset).reshape(shape))
                labels.append(int(files[LABEL_EXT]))
    if len(raws) != manifest.num_samples:
        raise ValueError(
            f"{url}: read {len(raws)} samples, the manifest lists {manifest.num_samples}. Fix: check "
            "the shards (tools/make_shards.py --verify)"
        )
    return np.stack(raws), np.asarray(labels, dtype=np.int64), manifest
