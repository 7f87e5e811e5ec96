"""Monitoring: cross-rank statistics, TensorBoard (kimg axis), stats.jsonl, and rank-0 terminal output.

Per-step values are accumulated on the device without host syncs and reduced across ranks only at status time.
Rank 0 writes TensorBoard events to <run_dir>/tensorboard and appends the same scalars to <run_dir>/stats.jsonl;
it shows a rich progress bar and a config table on an interactive terminal, and fixed-width status lines with
progress, total and ETA otherwise (SLURM logs), and a summary at the end. Other ranks stay quiet.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import torch

from ect_scale.config import LoggingConfig
from ect_scale.runtime import dist


class StepStats:
    """Device-side accumulators for one status interval."""

    def __init__(self, device: torch.device, num_buckets: int, P_mean: float, P_std: float):
        self.device = device
        # Bucket edges in ln t: num_buckets equal-probability bins of the lognormal t distribution.
        probs = torch.linspace(0, 1, num_buckets + 1)[1:-1].double()
        z = torch.erfinv(2 * probs - 1) * math.sqrt(2)
        self.edges = (P_mean + P_std * z).float().to(device)
        self.num_buckets = num_buckets
        self.reset()

    def reset(self) -> None:
        d = self.device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=d)
        self.count = torch.zeros((), dtype=torch.float64, device=d)
        self.bucket_sum = torch.zeros(self.num_buckets, dtype=torch.float64, device=d)
        self.bucket_count = torch.zeros(self.num_buckets, dtype=torch.float64, device=d)
        self.nonfinite_targets = torch.zeros((), dtype=torch.float64, device=d)
        self.grad_norm_sum, self.grad_norm_count = 0.0, 0
        self.data_sec, self.step_sec, self.images = 0.0, 0.0, 0

    @torch.no_grad()
    def add_micro(self, loss: torch.Tensor, t: torch.Tensor, nonfinite: torch.Tensor) -> None:
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        loss = torch.where(finite, loss, torch.zeros_like(loss))
        self.loss_sum += loss.sum()
        self.count += finite.sum()
        idx = torch.bucketize(t.detach().log().float(), self.edges)
        self.bucket_sum.index_add_(0, idx, loss)
        self.bucket_count.index_add_(0, idx, finite.double())
        self.nonfinite_targets += nonfinite.double()

    def reduce(self) -> dict:
        """Cross-rank sums (collective) -> plain floats."""
        packed = torch.cat(
            [
                self.loss_sum.view(1),
                self.count.view(1),
                self.bucket_sum,
                self.bucket_count,
                self.nonfinite_targets.view(1),
            ]
        )
        packed = dist.all_reduce_(packed)
        nb = self.num_buckets
        loss_sum, count = float(packed[0]), float(packed[1])
        bucket_sum, bucket_count = packed[2 : 2 + nb].tolist(), packed[2 + nb : 2 + 2 * nb].tolist()
        edges = [-math.inf] + self.edges.exp().tolist() + [math.inf]
        out = {"Loss/mean": loss_sum / max(count, 1.0), "Loss/nonfinite_targets": float(packed[-1])}
        for i in range(nb):
            if bucket_count[i] > 0:
                lo, hi = edges[i], edges[i + 1]
                out[f"Loss/t_{_fmt_t(lo)}-{_fmt_t(hi)}"] = bucket_sum[i] / bucket_count[i]
        return out


def _fmt_t(t: float) -> str:
    if math.isinf(t):
        return "0" if t < 0 else "inf"
    return f"{t:.3g}"


class Monitor:
    """TensorBoard + stats.jsonl + terminal output, active on rank 0 only."""

    def __init__(self, run_dir: str, logging_cfg: LoggingConfig, total_nimg: int, ect_stages: bool = True):
        """`ect_stages=False` (the diffusion teacher) leaves the ECT stage and dt/t out of status lines. Outputs
        open here; the progress bar starts with `start(nimg)` once the run knows where it resumes."""
        self.active = dist.is_main()
        self.total_nimg = total_nimg
        self.ect = ect_stages
        self._rate_origin: Optional[tuple[float, int]] = None  # (time, nimg) of the first status: ETA rate.
        self.writer = None
        self.jsonl = None
        self.progress = None
        self.task = None
        mode = logging_cfg.progress
        self.interactive = mode == "rich" or (mode == "auto" and sys.stdout.isatty())
        self.quiet = mode == "none"
        if not self.active:
            return
        os.makedirs(run_dir, exist_ok=True)
        if logging_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), flush_secs=30)
        if logging_cfg.jsonl:
            self.jsonl = open(os.path.join(run_dir, "stats.jsonl"), "a")

    def start(self, nimg: int) -> None:
        """Show the progress bar from `nimg` (an interactive terminal on rank 0 only)."""
        if self.active and self.interactive and not self.quiet and self.progress is None:
            self._start_progress(nimg)

    def _start_progress(self, start_nimg: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        label = "ECT" if self.ect else "EDM2 diffusion"
        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            TextColumn("{task.completed:,.1f}/{task.total:,.1f} kimg"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            refresh_per_second=2,
        )
        self.task = self.progress.add_task(
            "train", total=self.total_nimg / 1000, completed=start_nimg / 1000, status="starting"
        )
        self.progress.start()

    def print(self, *lines: str) -> None:
        if not self.active or self.quiet:
            return
        for line in lines:
            if self.progress is not None:
                self.progress.console.print(line)
            else:
                print(line, flush=True)

    def config_table(self, rows: list[tuple[str, str]]) -> None:
        if not self.active or self.quiet:
            return
        if self.interactive:
            from rich.console import Console
            from rich.table import Table

            table = Table(title="ect_scale run", show_header=False)
            for k, v in rows:
                table.add_row(k, v)
            (self.progress.console if self.progress else Console()).print(table)
        else:
            width = max(len(k) for k, _ in rows)
            self.print(*[f"{k:<{width}}  {v}" for k, v in rows])

    def tick(self, nimg: int, status: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=nimg / 1000, status=status)

    def log(self, nimg: int, scalars: dict[str, float], status: bool = True) -> None:
        """Write scalars on the kimg axis (rank 0) and, for training statistics (`status`), print a status line.
        Evaluation records pass `status=False`: the evaluator prints its own line."""
        if not self.active:
            return
        kimg = nimg / 1000
        if self.writer is not None:
            for k, v in scalars.items():
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(k, v, global_step=int(round(kimg)), walltime=time.time())
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"kimg": kimg, "timestamp": time.time(), **scalars}) + "\n")
            self.jsonl.flush()
        if not status:
            return
        self.tick(nimg, _short_status(scalars, self.ect))
        if self.progress is None:
            self.print(status_line(kimg, scalars, self.total_nimg / 1000, self._eta(nimg, scalars), self.ect))

    def _eta(self, nimg: int, scalars: dict[str, float]) -> Optional[float]:
        """Seconds to `total_nimg` at the average rate since the first status line of this process (it includes
        checkpoints and exports); the interval's rate for the first line."""
        now = time.time()
        if self._rate_origin is None:
            self._rate_origin = (now, nimg)
        t0, n0 = self._rate_origin
        rate = (nimg - n0) / (now - t0) if nimg > n0 and now > t0 else scalars.get("Throughput/img_per_sec", 0.0)
        return max(self.total_nimg - nimg, 0) / rate if rate and rate > 0 else None

    def add_images(self, tag: str, images_uint8: torch.Tensor, nimg: int) -> None:
        if self.active and self.writer is not None:
            self.writer.add_images(tag, images_uint8, global_step=int(round(nimg / 1000)), dataformats="NCHW")

    def close(self) -> None:
        if not self.active:
            return
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _short_status(s: dict, ect: bool = True) -> str:
    stage = f"stage {int(s.get('ECT/stage', 0))}  " if ect else ""
    shards = int(s.get("Data/corrupt_shards_skipped", 0))
    return f"loss {s.get('Loss/mean', float('nan')):.4f}  {stage}{s.get('Throughput/img_per_sec', 0):.1f} img/s" + (
        f"  {shards} shards skipped" if shards else ""
    )


def status_line(
    kimg: float, s: dict, total_kimg: Optional[float] = None, eta_sec: Optional[float] = None, ect: bool = True
) -> str:
    """EDM2-style fixed-width status line for non-interactive logs: progress of the total, then the interval's
    statistics, then the ETA. `ect=False` (the diffusion teacher) leaves out the ECT stage and dt/t."""
    mfu, mem = s.get("Throughput/mfu"), s.get("Resources/peak_gpu_mem_gb")
    progress = f"{kimg:.1f}" if total_kimg is None else f"{kimg:.1f}/{total_kimg:.1f}"
    fields = [f"kimg {progress:<17}", f"loss {s.get('Loss/mean', float('nan')):<10.5g}"]
    if ect:
        fields += [f"stage {int(s.get('ECT/stage', 0)):<2d}", f"dt/t {s.get('ECT/dt_over_t', float('nan')):<8.5f}"]
    fields += [
        f"lr {s.get('Optim/lr', 0):<9.3e}",
        f"gnorm {s.get('Grad/norm', float('nan')):<9.3g}",
        f"img/s {s.get('Throughput/img_per_sec', 0):<8.1f}",
        f"mfu {'-' if mfu is None else f'{100 * mfu:.1f}%':<6s}",
        f"data {100 * s.get('Timing/data_wait_frac', 0):>4.1f}%",
        f"mem {'-' if mem is None else f'{mem:.1f}G':<7s}",
        f"skip {int(s.get('Progress/skipped_steps', 0)):<3d}",
    ]
    if "Data/corrupt_shards_skipped" in s:
        fields.append(f"bad-shards {int(s['Data/corrupt_shards_skipped']):<3d}")
    lost = max(s.get("Data/outage_sec", 0.0), s.get("Checkpoint/outage_sec", 0.0))
    if lost:  # Time the store was out for data reads or for checkpoint I/O (often the same outage), any rank's most.
        fields.append(f"outage {duration(lost)}")
    fields.append(f"eta {'-' if eta_sec is None else duration(eta_sec)}")
    return "  ".join(fields)


def duration(sec: float) -> str:
    """h:mm:ss (days as d-h:mm:ss)."""
    sec = int(round(max(sec, 0.0)))
    days, rest = divmod(sec, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def summary_lines(
    *,
    nimg: int,
    total_nimg: int,
    session_nimg: int,
    session_sec: float,
    elapsed_sec: float,
    skipped_steps: int,
    shards_skipped: Optional[int],
    places: list[tuple[str, str]],
) -> list[str]:
    """The end-of-run summary: what was done, how fast, what went wrong, and where the results are."""
    head = "Finished" if nimg >= total_nimg else f"Stopped at {nimg:,} of {total_nimg:,} images"
    done = f"{nimg:,} images" if nimg >= total_nimg else "re-run the same command to continue"
    rate = session_nimg / session_sec if session_sec > 0 else 0.0
    shards = "" if shards_skipped is None else f", {shards_skipped} shards skipped"
    lines = [
        f"{head}: {done}. This session: {session_nimg:,} images in {duration(session_sec)} ({rate:.1f} img/s); "
        f"training time {duration(elapsed_sec)} in total; {skipped_steps} skipped steps{shards}."
    ]
    width = max((len(k) for k, _ in places), default=0)
    return lines + [f"  {k:<{width}}  {v}" for k, v in places]
