#!/usr/bin/env python3
"""Measure the streaming loader's throughput (samples/s) from local disk and from S3, printing one JSON per line.

    python tools/bench_loader.py                                  # local + a moto S3 server on loopback
    python tools/bench_loader.py --where s3 --endpoint-url http://minio:9000 --bucket bench   # a real store
    python tools/bench_loader.py --workers 0,2,4 --ranks 1,2      # ranks = concurrent training processes

Writes a synthetic data set shaped like ImageNet-512 SD-VAE shards (float16 moments [8,64,64], 64 KiB a sample)
with the real shard writer, then times `build_train_stream` for every (where, ranks, workers) combination:
`samples_per_s` is per rank ("per process"), `total_samples_per_s` is summed over the concurrent ranks ("per
node" when --ranks is the GPUs per node). The first batch (worker start-up) is timed separately.
Compare with the trainer's consumption rate: batch_gpu / step time of one GPU.
"""

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time

import numpy as np

from ect_scale.config import DataConfig
from ect_scale.data.convert import RawConverter
from ect_scale.data.encoders import LatentEncoder
from ect_scale.data.images import ArraySource
from ect_scale.data.shard_writer import WriterOptions, write_shards
from ect_scale.runtime import entry


class RandomMoments(RawConverter):
    """Random float16 'posterior moments' of a given shape (stands in for the VAE: the loader never looks)."""

    def __init__(self, shape: list[int], seed: int = 0):
        self.shape, self.rng = shape, np.random.default_rng(seed)

    def describe(self) -> dict:
        return LatentEncoder().describe()

    def raw_spec(self, resolution: int) -> tuple[list[int], str]:
        return self.shape, "float16"

    def convert(self, images: np.ndarray) -> np.ndarray:
        return self.rng.standard_normal((len(images), *self.shape), dtype=np.float32).astype(np.float16)


def make_dataset(url: str, samples: int, shards: int, shape: list[int]) -> None:
    source = ArraySource(np.zeros((samples, 8, 8, 3), np.uint8), [i % 1000 for i in range(samples)])
    write_shards(
        source,
        url,
        RandomMoments(shape),
        WriterOptions(resolution=8, num_shards=shards, progress_s=1e9),
        log=lambda *_: None,
    )


def start_moto() -> tuple[object, str]:
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return server, f"http://127.0.0.1:{port}"


def time_rank(url: str, endpoint, workers: int, batch: int, batches: int, rank: int, ranks: int, queue) -> None:
    """One training process: time `batches` batches after the first."""
    import torch

    from ect_scale.data import build_train_stream

    torch.set_num_threads(1)
    cfg = DataConfig(url=url, num_workers=workers, endpoint_url=endpoint, shuffle_buffer=1000, pin_memory=False)
    stream = build_train_stream(cfg, batch_gpu=batch, rank=rank, world_size=ranks, seed=0)
    start = time.perf_counter()
    next(stream)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        raw, _ = next(stream)
    seconds = time.perf_counter() - start
    stream.close()
    queue.put(
        {
            "first_batch_s": first,
            "seconds": seconds,
            "samples": batches * batch,
            "bytes": batches * raw.numel() * raw.element_size(),
        }
    )


def run_case(url: str, endpoint, workers: int, batch: int, batches: int, ranks: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=time_rank, args=(url, endpoint, workers, batch, batches, r, ranks, queue))
        for r in range(ranks)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    per_rank = [r["samples"] / r["seconds"] for r in results]
    return {
        "ranks": ranks,
        "workers": workers,
        "batch": batch,
        "batches": batches,
        "samples_per_s": round(min(per_rank), 1),
        "total_samples_per_s": round(sum(per_rank), 1),
        "mib_per_s": round(sum(r["bytes"] / r["seconds"] for r in results) / 2**20, 1),
        "first_batch_s": round(max(r["first_batch_s"] for r in results), 2),
    }


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--where", default="local,s3", help="comma list of local, s3")
    ap.add_argument("--workers", default="0,1,2,4", help="comma list of DataLoader workers per rank")
    ap.add_argument("--ranks", default="1", help="comma list of concurrent training processes")
    ap.add_argument("--samples", type=int, default=2048, help="data set size")
    ap.add_argument("--shards", type=int, default=32, help="shard count")
    ap.add_argument("--shape", default="8,64,64", help="raw sample shape (ImageNet-512 latents: 8,64,64)")
    ap.add_argument("--batch", type=int, default=32, help="batch per rank")
    ap.add_argument("--batches", type=int, default=120, help="timed batches per rank (after the first)")
    ap.add_argument("--endpoint-url", help="S3 endpoint (default: start moto's server on loopback)")
    ap.add_argument("--bucket", default="ect-bench", help="bucket for --where s3")
    return ap.parse_args(argv)


def _main(argv) -> int:
    args = parse_args(argv)
    shape = [int(v) for v in args.shape.split(",")]
    server, endpoint = (None, args.endpoint_url) if args.endpoint_url or "s3" not in args.where else start_moto()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"local": os.path.join(tmp, "bench")}
        make_dataset(urls["local"], args.samples, args.shards, shape)
        if "s3" in args.where:
            import s3fs

            fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
            if not fs.exists(args.bucket):
                fs.mkdir(args.bucket)
            fs.put(urls["local"] + "/", f"{args.bucket}/bench/", recursive=True)
            urls["s3"] = f"s3://{args.bucket}/bench"
        for where in args.where.split(","):
            for ranks in (int(v) for v in args.ranks.split(",")):
                for workers in (int(v) for v in args.workers.split(",")):
                    result = run_case(
                        urls[where], endpoint if where == "s3" else None, workers, args.batch, args.batches, ranks
                    )
                    print(
                        json.dumps({"where": where, "sample_shape": shape, "cpus": os.cpu_count(), **result}),
                        flush=True,
                    )
    if server is not None:
        server.stop()
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="bench_loader")


if __name__ == "__main__":
    sys.exit(main())
