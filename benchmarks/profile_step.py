#!/usr/bin/env python3
"""Profile the full ECT step (same setup as launchers/bench.py): GPU busy time per step, top kernels and ops.

    python benchmarks/profile_step.py --preset edm2-img512-s --sdpa --compile [--a.b=value ...]
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.argv.insert(1, "--steps=1")
import launchers.bench as bench_cli  # noqa: E402


def main() -> None:
    captured = {}

    def fake_benchmark(cfg, steps, warmup):
        from ect_scale.trainer import Trainer

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

    bench_cli.benchmark = fake_benchmark
    import ect_scale.bench

    ect_scale.bench.benchmark = fake_benchmark
    bench_cli.main()


if __name__ == "__main__":
    main()
