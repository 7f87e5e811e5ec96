#!/usr/bin/env python3
"""Profile the full ECT step (same setup as launchers/bench.py): GPU busy time per step, top kernels and ops.

python benchmarks/profile_step.py --preset edm2-img512-s --sdpa --compile [--a.b=value ...]
"""

import os
import runpy
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launchers", "bench.py")


def main() -> None:
    captured = {}

    def fake_benchmark(cfg, steps, warmup, gate=None, mem_limit_gb=None):
        from ect_scale.train.trainer import Trainer

        trainer = Trainer(cfg)
        for _ in range(6):
            trainer.train_step()
        torch.cuda.synchronize()
        n = 4
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(n):
                trainer.train_step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / n
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"wall/step {wall * 1e3:.1f} ms   GPU busy/step {gpu_us / n / 1e3:.1f} ms")
        print(events.table(sort_by="self_cuda_time_total", row_limit=28, max_name_column_width=70))
        print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70))
        captured["done"] = True
        return {}

    import ect_scale.train.bench

    ect_scale.train.bench.benchmark = fake_benchmark  # launchers/bench.py imports it when it runs.
    sys.argv.insert(1, "--steps=1")
    runpy.run_path(BENCH, run_name="__bench__")["main"]()


if __name__ == "__main__":
    main()
