"""Object storage through fsspec: endpoints, per-process filesystems, retrying shard reads, clear errors.

Any fsspec URL works (local paths, `s3://`, `gs://`, ...). For `s3://` the endpoint is, in order of precedence,
`StorageOptions.endpoint_url` (from `data.endpoint_url` or `--endpoint-url`), `FSSPEC_S3_ENDPOINT_URL`,
`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, else AWS itself. Credentials come from the standard AWS chain
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, instance roles).

Filesystems are created lazily per process (never inherited across fork; s3fs is not fork-safe) and cached by pid.
webdataset 1.x has no `s3://` opener: importing this module registers `gopen` handlers for s3 and the other
fsspec object stores, backed by `RetryingReader`, which re-opens a shard at its byte offset after a transient error
and rides out a store outage (`ect_scale.runtime.outage`) for `StorageOptions.outage_window_s`.

botocore sends `Expect: 100-continue` with every upload, and aiohttp waits for the interim answer with no timeout, so
an upload to a store that accepts connections but stalls would wait forever; the S3 filesystems made here leave the
header out, and the read timeout bounds every request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem
from webdataset.gopen import gopen_schemes

from ect_scale.runtime.errors import UserError
from ect_scale.runtime.outage import OutageClock, StoreOutageError, is_missing, outage_reason, ride_out

__all__ = [
    "StorageError",
    "StorageOptions",
    "StoreOutageError",
    "filesystem",
    "join",
    "read_bytes",
    "write_bytes",
    "commit_file",
    "open_shard",
    "RetryingReader",
    "configure_process",
    "describe_error",
    "clear_filesystem_cache",
    "COUNTERS",
]

# Per-process event counters (read by the loader's workers and reported to the training process).
COUNTERS = {"read_retries": 0}
_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class StorageError(UserError, RuntimeError):
    """Storage is unreachable, credentials are missing or rejected, or an object is missing; the message says the fix.

    `kind` is one of "credentials", "unreachable", "not-found", "other".
    """

    def __init__(self, message: str, kind: str = "other"):
        UserError.__init__(self, message)
        self.kind = kind

    def __reduce__(self):  # Keep `kind` when the error crosses a process boundary (DataLoader workers).
        return (type(self), (str(self), self.kind))


@dataclass(frozen=True)
class StorageOptions:
    endpoint_url: Optional[str] = None  # S3 endpoint override; None = from the environment (see module docstring).
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    retries: int = 5  # Re-opens of a read after a transient error (with exponential backoff).
    block_size: int = 16 << 20  # Read-ahead block in bytes.
    outage_window_s: float = 600.0  # How long shard reads ride out a store outage before the run stops.

    @classmethod
    def from_config(cls, cfg: Any) -> "StorageOptions":
        return cls(
            endpoint_url=cfg.endpoint_url,
            connect_timeout_s=cfg.connect_timeout_s,
            read_timeout_s=cfg.read_timeout_s,
            retries=cfg.retries,
            block_size=cfg.block_size_mib << 20,
            outage_window_s=cfg.outage_window_s,
        )

    def s3_endpoint(self) -> Optional[str]:
        for value in (
            self.endpoint_url,
            os.environ.get("FSSPEC_S3_ENDPOINT_URL"),
            os.environ.get("AWS_ENDPOINT_URL_S3"),
            os.environ.get("AWS_ENDPOINT_URL"),
        ):
            if value:
                return value
        return None

    def resolved(self) -> "StorageOptions":
        """These options with the endpoint looked up now (worker processes may not share this process's environment,
        e.g. a forkserver started earlier)."""
        return dataclasses.replace(self, endpoint_url=self.s3_endpoint())

    def fast_fail(self) -> "StorageOptions":
        """Options for a first probe that must fail within seconds (no long retry chains)."""
        return dataclasses.replace(
            self, connect_timeout_s=min(self.connect_timeout_s, 5.0), retries=1, outage_window_s=0.0
        )


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def local_path(url: str) -> str:
    """The filesystem path of a local URL (`/x`, `file:///x`)."""
    return url.split("://", 1)[1] if url.startswith("file://") else url


_FILESYSTEMS: dict[tuple, Any] = {}


def filesystem(url: str, options: StorageOptions = StorageOptions()) -> tuple[Any, str]:
    """(filesystem, path within it) for `url`; one filesystem per (process, protocol, options)."""
    protocol = protocol_of(url)
    key = (os.getpid(), protocol, options)
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        if protocol in ("s3", "s3a"):
            fs = _s3_filesystem(options)
        else:
            fs = fsspec.filesystem(protocol)
        _FILESYSTEMS[key] = fs
    return fs, fs._strip_protocol(url)


def clear_filesystem_cache() -> None:
    """Forget this process's filesystems (e.g. after credentials or endpoints changed in the environment)."""
    _FILESYSTEMS.clear()


def _s3_filesystem(options: StorageOptions):
    import s3fs
    from aiobotocore.session import AioSession
    from botocore.handlers import add_expect_header

    config_kwargs = {
        "connect_timeout": options.connect_timeout_s,
        "read_timeout": options.read_timeout_s,
        "retries": {"max_attempts": 1 if options.retries <= 1 else 2, "mode": "standard"},
    }
    session = AioSession()
    session.unregister("before-call.s3", add_expect_header)  # Bounded uploads (see the module docstring).
    # endpoint_url as a keyword overrides fsspec's FSSPEC_S3_ENDPOINT_URL config (both in client_kwargs would clash).
    fs = s3fs.S3FileSystem(
        session=session,
        endpoint_url=options.s3_endpoint(),
        config_kwargs=config_kwargs,
        default_block_size=options.block_size,
        skip_instance_cache=True,
    )
    # s3fs's short inner retry loop; shard reads add RetryingReader's longer one (re-open at offset).
    fs.retries = 1 if options.retries <= 1 else 2
    return fs


def join(base: str, name: str) -> str:
    """`base/name` for local paths and URLs alike."""
    if "://" in base:
        return base.rstrip("/") + "/" + name
    return os.path.join(base, name)


def dirname(url: str) -> str:
    if "://" in url:
        head, _, _ = url.rstrip("/").rpartition("/")
        return head
    return os.path.dirname(os.path.abspath(url))


# ----------------------------------------------------------------------------
# Errors that name the URL, the endpoint and the fix.


def describe_error(exc: BaseException, url: str, options: StorageOptions, action: str = "read") -> StorageError:
    """Translate an fsspec/s3fs/botocore exception into a `StorageError` that says how to fix it."""
    name = type(exc).__name__
    text = f"{name}: {exc}"
    s3 = protocol_of(url) in ("s3", "s3a")
    where = f" at endpoint {options.s3_endpoint() or 'AWS default'}" if s3 else ""
    env_fix = (
        "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) on every node; under the deepspeed "
        "launcher put them in .deepspeed_env (docs/data.md)"
    )
    if name == "NoCredentialsError" or "Unable to locate credentials" in text:
        return StorageError(f"cannot {action} {url}: no AWS credentials found{where}. Fix: {env_fix}", "credentials")
    if any(
        s in text for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "AccessDenied")
    ) or isinstance(exc, PermissionError):
        return StorageError(
            f"cannot {action} {url}: credentials rejected{where} ({text}). Fix: check the keys and "
            f"the bucket policy; {env_fix}",
            "credentials",
        )
    if s3 and any(
        s in name + text
        for s in (
            "EndpointConnectionError",
            "ConnectTimeout",
            "ConnectionError",
            "Could not connect",
            "ClientConnectorError",
            "ReadTimeout",
        )
    ):
        return StorageError(
            f"cannot {action} {url}: the S3 endpoint {options.s3_endpoint() or '(AWS default)'} is "
            f"unreachable ({text}). Fix: check data.endpoint_url / FSSPEC_S3_ENDPOINT_URL / "
            "AWS_ENDPOINT_URL and that this node can reach the store (firewall, VPN, DNS)",
            "unreachable",
        )
    if isinstance(exc, FileNotFoundError):
        return StorageError(
            f"cannot {action} {url}: not found{where} ({text}). Fix: check the URL and bucket name, "
            "or create the data with tools/make_shards.py",
            "not-found",
        )
    return StorageError(f"cannot {action} {url}{where}: {text}")


def read_bytes(url: str, options: StorageOptions = StorageOptions()) -> bytes:
    """The whole object at `url`; storage problems raise `StorageError` with the fix."""
    try:
        fs, path = filesystem(url, options)
        return fs.cat_file(path)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - translated into an actionable message
        raise describe_error(e, url, options) from e


def write_bytes(url: str, data: bytes, options: StorageOptions = StorageOptions()) -> None:
    """Write `data` to a temporary key next to `url`, then move it into place (readers never see partial objects)."""
    _atomic_put(url, options, lambda fs, tmp_path: fs.pipe_file(tmp_path, data))


def commit_file(local_file: str, url: str, options: StorageOptions = StorageOptions()) -> None:
    """Upload a finished local file to a temporary key, then rename it to `url` (the commit)."""
    _atomic_put(url, options, lambda fs, tmp_path: fs.put_file(local_file, tmp_path))


def _atomic_put(url: str, options: StorageOptions, upload) -> None:
    """`upload(fs, tmp_path)` to a temporary key next to `url`, then rename it into place."""
    tmp = url + f".tmp-{os.getpid()}"
    try:
        fs, path = filesystem(url, options)
        _, tmp_path = filesystem(tmp, options)
        _makedirs(fs, path)
        upload(fs, tmp_path)
        fs.mv(tmp_path, path)
    except Exception as e:  # noqa: BLE001
        raise describe_error(e, url, options, action="write") from e


def file_sha256(path: str) -> str:
    """sha256 of a local file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _makedirs(fs, path: str) -> None:
    """Create the parent folder on local filesystems (object stores have no folders)."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent and isinstance(fs, LocalFileSystem):
        fs.makedirs(parent, exist_ok=True)


# ----------------------------------------------------------------------------
# Retrying sequential reads (webdataset does not retry; a dropped connection would silently end the shard).


class RetryingReader(io.RawIOBase):
    """Sequential reader that re-opens the object at its current byte offset after a failed request.

    A store outage (`runtime.outage.outage_reason`: refused or dropped connections, timeouts, 5xx) is ridden out for
    `options.outage_window_s`, then `StoreOutageError`. A 404 counts as an outage when the `canary` object (the
    manifest, which exists) is missing too: a store restarting, not a missing shard. Other errors are retried
    `options.retries` times, then raised as a `StorageError` (missing objects and rejected credentials at once).
    Each re-open increments `COUNTERS["read_retries"]`.
    """

    def __init__(
        self,
        url: str,
        options: StorageOptions,
        clock: Optional[OutageClock] = None,
        canary: Optional[str] = None,
    ):
        super().__init__()
        self.url, self.options, self.canary = url, options, canary
        self.clock = clock or _PROCESS_CLOCK
        self._fs, self._path = filesystem(url, options)
        self._file = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _open(self):
        # No size hint from the manifest: a damaged (shorter) object must read as truncated, not fail range requests.
        f = self._fs.open(self._path, "rb", block_size=self.options.block_size, cache_type="readahead")
        if self._pos:
            f.seek(self._pos)
        return f

    def readinto(self, buffer) -> int:
        try:
            return ride_out(
                lambda: self._read_once(buffer),
                window_s=self.options.outage_window_s,
                option="data.outage_window_s",
                clock=self.clock,
                what=f"reading {self.url}",
                classify=self._outage,
                on_retry=self._retrying,
            )
        except (StorageError, StoreOutageError):
            raise
        except Exception as e:  # noqa: BLE001 - translated into an actionable message
            raise describe_error(e, self.url, self.options) from e

    def _read_once(self, buffer) -> int:
        """One read; errors that are neither outages, missing objects nor rejected credentials are retried here."""
        for attempt in range(self.options.retries + 1):
            try:
                if self._file is None:
                    self._file = self._open()
                data = self._file.read(len(buffer))
                buffer[: len(data)] = data
                self._pos += len(data)
                return len(data)
            except _NOT_TRANSIENT:
                self._drop_file()
                raise
            except Exception as e:  # noqa: BLE001 - network errors come in many types
                self._drop_file()
                if outage_reason(e) or is_missing(e) or attempt == self.options.retries:
                    raise
                if describe_error(e, self.url, self.options).kind == "credentials":
                    raise
                COUNTERS["read_retries"] += 1
                time.sleep(min(2.0**attempt, 30.0) * random.uniform(0.5, 1.0))  # 1, 2, 4, ... s with jitter.
        raise AssertionError("unreachable")

    def _outage(self, error: BaseException) -> Optional[str]:
        reason = outage_reason(error)
        if reason is None and self.canary and is_missing(error) and not self._canary_found():
            reason = f"404 for {self.url} and for {self.canary}, which exists: the store is restarting?"
        return reason

    def _canary_found(self) -> bool:
        try:
            fs, path = filesystem(self.canary, self.options)
            fs.invalidate_cache(path)
            fs.info(path)
            return True
        except Exception:  # noqa: BLE001 - missing, or the store is not answering: either way not found
            return False

    def _retrying(self) -> None:
        COUNTERS["read_retries"] += 1
        self._drop_file()
        self._fs.invalidate_cache(self._path)  # s3fs caches what a failed listing or HEAD said.

    def _drop_file(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        except Exception:  # noqa: BLE001 - the connection is already broken
            pass
        self._file = None

    def close(self) -> None:
        self._drop_file()
        super().close()


def open_shard(url: str, options: Optional[StorageOptions] = None):
    """A buffered, retrying reader for a shard (with this process's outage clock and canary, `configure_process`);
    local paths are opened directly."""
    if protocol_of(url) == "file":
        return open(local_path(url), "rb", buffering=1 << 20)
    reader = RetryingReader(url, options or _PROCESS_OPTIONS, _PROCESS_CLOCK, _PROCESS_CANARY)
    return io.BufferedReader(reader, buffer_size=1 << 20)


# ----------------------------------------------------------------------------
# webdataset gopen handlers for fsspec object stores.

_PROCESS_OPTIONS = StorageOptions()
_PROCESS_CLOCK = OutageClock("data", logging.getLogger("ect_scale.data").warning)
_PROCESS_CANARY: Optional[str] = None
_GOPEN_PROTOCOLS = ("s3", "s3a", "gcs", "gs", "az", "abfs", "abfss", "oss")


def configure_process(
    options: StorageOptions, clock: Optional[OutageClock] = None, canary: Optional[str] = None
) -> None:
    """Set the storage options, the outage clock and the canary object (an object known to exist: a 404 for it too
    means the store is restarting) of the gopen handlers in this process (call in each DataLoader worker)."""
    global _PROCESS_OPTIONS, _PROCESS_CLOCK, _PROCESS_CANARY
    _PROCESS_OPTIONS = options
    _PROCESS_CLOCK = clock or _PROCESS_CLOCK
    _PROCESS_CANARY = canary


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    if mode.startswith("r"):
        return open_shard(url, _PROCESS_OPTIONS)
    fs, path = filesystem(url, _PROCESS_OPTIONS)
    return fs.open(path, mode)


def register_gopen_handlers() -> None:
    """Route webdataset's `gopen` for object-store URLs through fsspec (only protocols fsspec can import)."""
    for protocol in _GOPEN_PROTOCOLS:
        if protocol in ("s3", "s3a") or _importable(protocol):
            gopen_schemes[protocol] = _gopen_fsspec


def _importable(protocol: str) -> bool:
    try:
        fsspec.get_filesystem_class(protocol)
        return True
    except (ImportError, ValueError):
        return False


register_gopen_handlers()
