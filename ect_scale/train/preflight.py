"""Checks of everything a run needs from outside the config (`launchers/train.py --dry-run`), all problems at once.

    problems = check_run(cfg, world_size)     # [] when the run can start

Each problem is one line naming the option, what is wrong and the fix:
  * placeholders left in the recipe (`s3://YOUR-BUCKET/...`, `<path>`) are named and not contacted;
  * `init`: the network file exists, is readable, and holds the run's architecture (only its header is read);
  * `teacher`, `guide` (distillation): the network files exist and draw the run's data (resolution, channels,
    classes, sigma_data; header only), and the teacher's GPU copy is allowed under the run's ZeRO stage;
  * `data.url`: the manifest opens (short timeouts), its samples and classes fit the network, and its shards go
    round ranks x workers (`data.kind: synthetic` needs nothing);
  * `run_dir`, `checkpoint.dir`: writable (local: the nearest existing folder; object storage: a probe object is
    written and deleted);
  * with in-loop evaluation on, the files `eval.*` names exist.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Callable, Optional

from ect_scale.config import Config, ConfigError, to_dict
from ect_scale.data.manifest import load_manifest
from ect_scale.data.order import Layout
from ect_scale.data.storage import StorageOptions, describe_error, filesystem, join, local_path, protocol_of
from ect_scale.data.stream import check_layout
from ect_scale.networks.netfile import check_compatible, read_network_header
from ect_scale.runtime.errors import UserError, user_error_of
from ect_scale.train.teacher import check_fit, replica_dtype

PLACEHOLDER = re.compile(r"(?i)\byour[-_][a-z0-9]|<[^<>\s]+>")


def check_run(cfg: Config, world_size: int = 1) -> list[str]:
    """Every problem found (see the module docstring); an empty list means the run can start."""
    placeholders = dict(placeholder_problems(cfg))
    checks: list[tuple[str, Callable[[], Optional[str]]]] = [
        ("init", lambda: _init(cfg)),
        ("teacher", lambda: _frozen(cfg, "teacher", world_size)),
        ("guide", lambda: _frozen(cfg, "guide", world_size)),
        ("data.url", lambda: _data(cfg, world_size)),
        ("run_dir", lambda: _writable("run_dir", cfg.run_dir)),
    ]
    if cfg.checkpoint.enabled:
        folder = cfg.checkpoint.dir or os.path.join(cfg.run_dir, "checkpoints")
        checks.append(("checkpoint.dir", lambda: _writable("checkpoint.dir", folder)))
    checks += [(option, lambda o=option, p=path: _exists(o, p)) for option, path in _eval_files(cfg)]
    problems = []
    for option, check in checks:
        problem = placeholders.pop(option) if option in placeholders else check()
        if problem is not None:
            problems.append(problem)
    return problems + list(placeholders.values())


def unread_sections(cfg: Config) -> tuple[str, ...]:
    """Option prefixes this run never reads, so a placeholder left there is harmless: the data location of a
    synthetic-data run, the checkpoint folder of a run without checkpoints, the evaluation files of a run without
    in-loop evaluation."""
    unread = []
    if cfg.data.kind == "synthetic":
        unread += ["data.url", "data.endpoint_url", "data.vae"]
    if not cfg.checkpoint.enabled:
        unread.append("checkpoint.")
    if not cfg.eval.enabled:
        unread.append("eval.")
    return tuple(unread)


def placeholder_problems(cfg: Config) -> list[tuple[str, str]]:
    """(option, problem) for every option the run reads whose value is a template placeholder such as
    `s3://YOUR-BUCKET/...`."""
    out = []
    unread = unread_sections(cfg)
    for option, value in _flat(to_dict(cfg)):
        if option.startswith(unread):
            continue
        if isinstance(value, str) and PLACEHOLDER.search(value):
            out.append(
                (
                    option,
                    f"{option}: {value} is a placeholder from the recipe. Fix: set it to your own "
                    f"location (--{option}=... or in the YAML)",
                )
            )
    return out


def _flat(node: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        out += _flat(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return out


def _describe(option: str, exc: BaseException, url: str, action: str = "read") -> str:
    """One line for a failed check: user errors as they are, storage failures translated, anything else named."""
    if protocol_of(url) != "file" and not isinstance(exc, UserError):
        return f"{option}: {describe_error(exc, url, StorageOptions().resolved(), action)}"
    err = user_error_of(exc)
    text = str(err) if err is not None else f"cannot {action} {url} ({type(exc).__name__}: {exc})"
    named = isinstance(err, ConfigError) or re.match(rf"{option.split('.')[0]}[ :.]", text)  # Names it already.
    return text if named else f"{option}: {text}"


def _init(cfg: Config) -> Optional[str]:
    if not cfg.init:
        return None
    fix = "convert EDM2's pickle with tools/import_edm2.py (docs/import.md), or point init at an existing file"
    problem = _exists("init", cfg.init, fix)  # Object storage: a fast-failing probe before fsspec's retries.
    if problem is not None:
        return problem
    try:
        config, _ = read_network_header(cfg.init)
        check_compatible(config, cfg.network, cfg.init)
    except Exception as e:  # noqa: BLE001 - every failure is a problem to report
        return _describe("init", e, cfg.init)
    return None


def _frozen(cfg: Config, option: str, world_size: int) -> Optional[str]:
    """A distillation run's teacher or guide file (`train.teacher`)."""
    path = getattr(cfg, option)
    if not path:
        return None
    fix = f"convert EDM2's pickle with tools/import_edm2.py (docs/import.md), or point {option} at an existing file"
    problem = _exists(option, path, fix)
    if problem is not None:
        return problem
    try:
        config, _ = read_network_header(path)
        check_fit(config, cfg.network, option, path)
        replica_dtype(cfg, world_size)
    except Exception as e:  # noqa: BLE001
        return _describe(option, e, path)
    return None


def _data(cfg: Config, world_size: int) -> Optional[str]:
    data = cfg.data
    if data.kind == "synthetic":
        return None
    try:
        manifest = load_manifest(data.url, StorageOptions.from_config(data).resolved().fast_fail())
        manifest.check_fits(cfg.network)
        check_layout(
            manifest,
            Layout(
                seed=cfg.train.seed,
                world_size=world_size,
                num_workers=data.num_workers,
                batch_gpu=cfg.train.batch_gpu,
                shuffle_buffer=data.shuffle_buffer,
                shard_counts=tuple(s.num_samples for s in manifest.shards),
            ),
        )
    except Exception as e:  # noqa: BLE001
        return _describe("data.url", e, data.url)
    return None


def _writable(option: str, url: str) -> Optional[str]:
    if protocol_of(url) != "file":
        options = StorageOptions().resolved().fast_fail()
        probe = join(url, f".ect_scale-dry-run-{uuid.uuid4().hex[:8]}")
        try:
            fs, path = filesystem(probe, options)
            fs.pipe_file(path, b"")
            fs.rm_file(path)
        except Exception as e:  # noqa: BLE001
            return f"{option}: {describe_error(e, url, options, 'write')}"
        return None
    path = existing = os.path.abspath(local_path(url))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    fix = f"choose a folder you can write (--{option}=...)"
    if not os.path.isdir(existing):
        return f"{option}: cannot create {path}: {existing} is a file, not a folder. Fix: {fix}"
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == path else f"would be created in {existing}, which is"
        return f"{option}: {path} {where} not writable for this user. Fix: {fix}"
    return None


def _exists(option: str, url: str, fix: str = "check the path") -> Optional[str]:
    if protocol_of(url) == "file":
        path = local_path(url)
        if not os.path.exists(path):
            where = "" if os.path.isabs(path) else f" in {os.getcwd()}"
            return f"{option}: {path} does not exist{where}. Fix: {fix}"
        if not os.access(path, os.R_OK):
            return f"{option}: {path} is not readable for this user. Fix: check its permissions"
        return None
    options = StorageOptions().resolved().fast_fail()
    try:
        fs, path = filesystem(url, options)
        if not fs.exists(path):
            raise FileNotFoundError(url)
    except Exception as e:  # noqa: BLE001
        return f"{option}: {describe_error(e, url, options)}"
    return None


def _eval_files(cfg: Config) -> list[tuple[str, str]]:
    e = cfg.eval
    if e.interval_nimg <= 0:
        return []
    files = [
        ("eval.ref_stats", e.ref_stats),
        ("eval.inception_path", e.inception_path if "fid" in e.metrics else None),
        ("eval.dinov2_repo", e.dinov2_repo if "fd_dinov2" in e.metrics else None),
        ("eval.dinov2_path", e.dinov2_path if "fd_dinov2" in e.metrics else None),
    ]
    return [(option, path) for option, path in files if path]
