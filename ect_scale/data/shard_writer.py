"""Image source -> WebDataset tar shards + manifest.json on any fsspec URL; many writers, resumable.

Plan (identical in every writer): the source's sorted image list is permuted with `seed` (so every shard mixes
all classes) and cut into `num_shards` contiguous parts whose sizes differ by at most one. Writer `rank` of
`world_size` writes shards rank, rank + world_size, ... Each shard is built in a local temporary file, uploaded
to a temporary key and renamed into place (the commit); then a small record `_records/<shard>.json` (sample and
class counts, sha256, skipped images) is written. On restart a shard counts as done only if its record exists
and the committed object has the recorded size (`verify=True` also re-hashes it); everything else is redone.
Writer 0 waits for every record, then writes `manifest.json` last: its presence means the data set is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ect_scale.data.convert import RawConverter
from ect_scale.data.images import ImageSource, UnreadableImage
from ect_scale.data.manifest import FORMAT, LABEL_EXT, MANIFEST_NAME, RAW_EXT, SOURCE_EXT
from ect_scale.data.order import balanced_split, permutation
from ect_scale.data.progress import Progress
from ect_scale.data.storage import (
    StorageOptions,
    commit_file,
    describe_error,
    file_sha256,
    filesystem,
    join,
    local_path,
    protocol_of,
    write_bytes,
)
from ect_scale.runtime.filemode import make_shareable

RECORDS = "_records"
PLAN_KEYS = ("num_images", "resolution", "encoder", "raw", "num_shards", "seed")
MAX_LISTED_SKIPS = 10_000


@dataclass
class WriterOptions:
    resolution: int  # Target image resolution (center crop).
    shard_size: int = 1000  # Max samples per shard (ignored when num_shards is given).
    num_shards: Optional[int] = None  # Exact shard count (prefer a multiple of ranks x loader workers).
    seed: int = 0  # Permutation of the source before sharding.
    limit: Optional[int] = None  # Convert only the first `limit` images of the permuted order (trial runs).
    rank: int = 0
    world_size: int = 1
    batch: int = 32  # Images per encoder call.
    io_threads: int = 8  # Threads decoding images.
    verify: bool = False  # On resume, re-hash committed shards instead of checking sizes only.
    wait_timeout_s: float = 0.0  # Writer 0: how long to wait for other writers' shards (0 = forever).
    progress_s: float = 10.0  # Seconds between progress lines.


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def plan_shards(num_images: int, opts: WriterOptions) -> list[list[int]]:
    """Source indices of every shard (see module docstring)."""
    order = permutation(num_images, "make_shards", opts.seed)
    if opts.limit is not None:
        order = order[: opts.limit]
    num_shards = opts.num_shards or max(1, math.ceil(len(order) / opts.shard_size))
    if num_shards > len(order):
        raise ValueError(f"--num-shards {num_shards}: more shards than images ({len(order)}). Fix: use fewer shards")
    return balanced_split(order, num_shards)


def write_shards(
    source: ImageSource,
    out_url: str,
    converter: RawConverter,
    opts: WriterOptions,
    storage: Optional[StorageOptions] = None,
    log=print,
) -> Optional[dict]:
    """Write this writer's shards (skipping committed ones); writer 0 then writes the manifest and returns it."""
    storage = storage if storage is not None else StorageOptions()
    shards = plan_shards(len(source), opts)
    plan = plan_dict(source, converter, opts, shards)
    _check_plan(out_url, plan, storage)
    mine = list(range(opts.rank, len(shards), opts.world_size))
    done = committed_shards(out_url, mine, storage, verify=opts.verify)
    todo = [i for i in mine if i not in done]
    total = sum(len(shards[i]) for i in todo)
    raw = plan["raw"]
    log(
        f"[make_shards w{opts.rank}/{opts.world_size}] {source.kind} ({len(source)} images) -> {len(shards)} shards "
        f"of {raw['dtype']} {raw['shape']} at {out_url}; mine: {len(mine)}, already committed: {len(done)}, "
        f"to write: {len(todo)} ({total} images)"
    )
    progress = Progress(f"[make_shards w{opts.rank}/{opts.world_size}]", total, opts.progress_s, log)
    with ThreadPoolExecutor(max(1, opts.io_threads)) as pool:
        for n, i in enumerate(todo):
            record = _write_one(source, shards[i], i, out_url, converter, opts, storage, pool, progress)
            last = n + 1 == len(todo)
            progress.line(
                f"committed {record['name']} ({n + 1}/{len(todo)}): {record['num_samples']} samples, "
                f"{record['bytes'] / 2**20:.1f} MiB, {len(record['skipped'])} skipped",
                force=last,
            )
    if opts.rank != 0:
        log(f"[make_shards w{opts.rank}/{opts.world_size}] done; writer 0 writes the manifest")
        return None
    return finalize(out_url, len(shards), plan, storage, opts.wait_timeout_s, log)


def plan_dict(source: ImageSource, converter: RawConverter, opts: WriterOptions, shards: list[list[int]]) -> dict:
    shape, dtype = converter.raw_spec(opts.resolution)
    return {
        "format": FORMAT,
        "source": source.describe(),
        "num_images": sum(len(s) for s in shards),
        "resolution": opts.resolution,
        "encoder": converter.describe(),
        "raw": {"shape": shape, "dtype": dtype},
        "num_shards": len(shards),
        "seed": opts.seed,
        "label_dim": source.label_dim,
        "class_names": source.class_names,
    }


def _check_plan(out_url: str, plan: dict, storage: StorageOptions) -> None:
    """Refuse to mix shards of different plans in one output; record the plan for later runs."""
    url = join(join(out_url, RECORDS), "plan.json")
    try:  # The first contact with the store: unreachable endpoints and missing credentials surface here.
        fs, path = filesystem(url, storage)
        old = json.loads(fs.cat_file(path)) if fs.exists(path) else None
    except Exception as e:  # noqa: BLE001 - translated into an actionable message
        raise describe_error(e, url, storage, action="write") from e
    if old is not None:
        diff = {k: (old.get(k), plan[k]) for k in PLAN_KEYS if old.get(k) != plan[k]}
        if diff:
            raise ValueError(
                f"--out {out_url}: already holds shards written with different settings "
                f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}). Fix: re-run with "
                "the original settings to resume, or choose a new --out"
            )
        return
    write_bytes(url, json.dumps(plan, indent=1).encode(), storage)


def committed_shards(out_url: str, indices: list[int], storage: StorageOptions, verify: bool = False) -> dict:
    """{shard index: record} of the shards among `indices` that are committed and match their record."""
    fs, out_path = filesystem(out_url, storage)
    records_path = out_path.rstrip("/") + "/" + RECORDS
    fs.invalidate_cache(out_path)
    try:
        sizes = {os.path.basename(e["name"].rstrip("/")): e["size"] for e in fs.ls(out_path, detail=True)}
        have_records = {os.path.basename(p) for p in fs.ls(records_path, detail=False)}
    except FileNotFoundError:
        return {}
    candidates = [i for i in indices if shard_name(i) + ".json" in have_records and shard_name(i) in sizes]
    blobs = fs.cat([f"{records_path}/{shard_name(i)}.json" for i in candidates]) if candidates else {}
    done = {}
    for i in candidates:
        name = shard_name(i)
        record = json.loads(blobs[f"{records_path}/{name}.json"])
        if sizes[name] != record["bytes"]:
            continue
        if verify and _sha256_of(fs, out_path.rstrip("/") + "/" + name) != record["sha256"]:
            continue
        done[i] = record
    return done


def _sha256_of(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------
# One shard.


def _write_one(
    source: ImageSource,
    indices: list[int],
    shard: int,
    out_url: str,
    converter: RawConverter,
    opts: WriterOptions,
    storage: StorageOptions,
    pool: ThreadPoolExecutor,
    progress: Progress,
) -> dict:
    """Build shard `shard` in a local temporary file, commit it, then write its record."""
    name = shard_name(shard)
    local_dir = os.path.dirname(local_path(join(out_url, name))) if protocol_of(out_url) == "file" else None
    if local_dir:
        os.makedirs(local_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tar.tmp", prefix=name + ".", dir=local_dir)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            record = _fill_tar(tar, source, indices, converter, opts, pool, progress)
        record = {
            "name": name,
            **record,
            "bytes": os.path.getsize(tmp),
            "sha256": file_sha256(tmp),
            "writer": opts.rank,
        }
        make_shareable(tmp)  # mkstemp made it 0600; committed shards are read by everyone using the data set.
        _commit(tmp, join(out_url, name), storage)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    write_bytes(join(join(out_url, RECORDS), name + ".json"), json.dumps(record).encode(), storage)
    return record


def _fill_tar(
    tar: tarfile.TarFile,
    source: ImageSource,
    indices: list[int],
    converter: RawConverter,
    opts: WriterOptions,
    pool: ThreadPoolExecutor,
    progress: Progress,
) -> dict:
    """Decode (threads) and convert (e.g. on the GPU) chunk by chunk; the next chunk decodes while one converts."""
    chunks = [indices[i : i + opts.batch] for i in range(0, len(indices), opts.batch)]
    class_counts = [0] * source.label_dim
    skipped, num_samples = [], 0
    pending = [pool.submit(_load, source, i, opts.resolution) for i in chunks[0]] if chunks else []
    for c in range(len(chunks)):
        loaded = [f.result() for f in pending]
        pending = [pool.submit(_load, source, i, opts.resolution) for i in chunks[c + 1]] if c + 1 < len(chunks) else []
        ok = [(i, img) for i, img, err in loaded if err is None]
        skipped += [{"path": source.names[i], "error": err} for i, _, err in loaded if err is not None]
        if ok:
            raws = converter.convert(np.stack([img for _, img in ok]))
            for (i, _), raw in zip(ok, raws):
                _add_sample(tar, i, raw, source.labels[i], source.names[i])
                if source.label_dim:
                    class_counts[source.labels[i]] += 1
        num_samples += len(ok)
        progress.advance(len(loaded), skipped=len(loaded) - len(ok))
    return {"num_samples": num_samples, "class_counts": class_counts, "skipped": skipped}


def _load(source: ImageSource, index: int, resolution: int) -> tuple[int, Optional[np.ndarray], Optional[str]]:
    try:
        return index, source.load(index, resolution), None
    except UnreadableImage as e:
        return index, None, str(e)


def _add_sample(tar: tarfile.TarFile, index: int, raw: np.ndarray, label: int, src: str) -> None:
    """Members `<key>.raw.npy`, `<key>.cls`, `<key>.src`; fixed metadata so equal inputs give equal bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(raw), allow_pickle=False)
    key = f"{index:09d}"
    for ext, payload in ((RAW_EXT, buf.getvalue()), (LABEL_EXT, str(int(label)).encode()), (SOURCE_EXT, src.encode())):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(payload), 0, 0o444
        tar.addfile(info, io.BytesIO(payload))


def _commit(local_tmp: str, url: str, storage: StorageOptions) -> None:
    if protocol_of(url) == "file":
        os.replace(local_tmp, local_path(url))  # Same folder: an atomic rename.
    else:
        commit_file(local_tmp, url, storage)


# ----------------------------------------------------------------------------
# The manifest (writer 0, after every shard is committed).


def finalize(
    out_url: str,
    num_shards: int,
    plan: dict,
    storage: StorageOptions,
    wait_timeout_s: float = 0.0,
    log=print,
    poll_s: float = 5.0,
) -> dict:
    """Wait until every shard has a record, then write `manifest.json` (the data set is complete when it exists)."""
    fs, out_path = filesystem(out_url, storage)
    records_path = out_path.rstrip("/") + "/" + RECORDS
    names = [shard_name(i) + ".json" for i in range(num_shards)]
    start = last_log = time.monotonic()
    while True:
        fs.invalidate_cache(records_path)
        have = {os.path.basename(p) for p in fs.ls(records_path, detail=False)}
        missing = [n for n in names if n not in have]
        if not missing:
            break
        if wait_timeout_s and time.monotonic() - start > wait_timeout_s:
            raise TimeoutError(
                f"{len(missing)} shards (e.g. {missing[0][:-5]}) were not committed within "
                f"--wait-timeout-s={wait_timeout_s:g}. Fix: check the other writers' logs, re-run "
                "them (finished shards are kept), then run with --finalize-only"
            )
        if time.monotonic() - last_log > 60 or last_log == start:
            log(f"[make_shards w0] waiting for {len(missing)}/{num_shards} shards from other writers")
            last_log = time.monotonic()
        time.sleep(poll_s)
    blobs = fs.cat([records_path + "/" + n for n in names])
    records = [json.loads(blobs[records_path + "/" + n]) for n in names]
    manifest = _manifest_dict(records, plan)
    write_bytes(join(out_url, MANIFEST_NAME), json.dumps(manifest, indent=1).encode(), storage)
    log(
        f"[make_shards w0] wrote {join(out_url, MANIFEST_NAME)}: {manifest['num_samples']} samples in {num_shards} "
        f"shards ({sum(r['bytes'] for r in records) / 2**30:.2f} GiB), {manifest['skipped']['count']} images skipped"
    )
    return manifest


def _manifest_dict(records: list[dict], plan: dict) -> dict:
    label_dim = plan["label_dim"]
    class_counts = [sum(r["class_counts"][c] for r in records) for c in range(label_dim)] if label_dim else []
    skipped = [s for r in records for s in r["skipped"]]
    return {
        "format": FORMAT,
        "shards": [{k: r[k] for k in ("name", "num_samples", "bytes", "sha256")} for r in records],
        "num_samples": sum(r["num_samples"] for r in records),
        "resolution": plan["resolution"],
        "raw": plan["raw"],
        "channels": plan["raw"]["shape"][0],
        "label_dim": label_dim,
        "class_names": plan["class_names"],
        "class_counts": class_counts,
        "encoder": plan["encoder"],
        "source": plan["source"],
        "skipped": {"count": len(skipped), "items": skipped[:MAX_LISTED_SKIPS]},
        "seed": plan["seed"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "created_by": "tools/make_shards.py",
    }
