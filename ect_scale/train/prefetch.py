"""Prefetch training micro-batches to the GPU: a background thread pulls the next batches from the data stream and
copies them to the device on a side CUDA stream, so data loading and host-to-device copies overlap compute.

The wrapper keeps the data stream's resume contract: `state_dict()` is the underlying stream's state right after
the last batch the trainer *consumed* (prefetched-but-unused batches are not counted), so checkpoints stay exact.
"""

from __future__ import annotations

import queue
import threading
from typing import Optional

import torch


class DevicePrefetcher:
    """Wraps a training stream (`(raw, labels)` iterator with state_dict/load_state_dict/counters/close)."""

    def __init__(self, stream, device: torch.device, depth: int = 2):
        self.stream = stream
        self.device = device
        self.depth = depth
        self.encoder = stream.encoder
        self.manifest = getattr(stream, "manifest", None)
        self._queue: Optional[queue.Queue] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._state = stream.state_dict()
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None

    # ------------------------------------------------------------------ producer
    def _produce(self) -> None:
        try:
            for raw, labels in self.stream:
                state = self.stream.state_dict()
                event = None
                if self._side is not None:
                    with torch.cuda.stream(self._side):
                        raw = raw.to(self.device, non_blocking=True)
                        labels = labels.to(self.device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(self._side)
                item = ("batch", raw, labels, event, state)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(("end", None, None, None, None))
        except BaseException as e:  # noqa: BLE001 - hand the error to the consumer
            self._queue.put(("error", e, None, None, None))

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, name="ect-prefetch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ consumer
    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            self._start()
        kind, raw, labels, event, state = self._queue.get()
        if kind == "error":
            raise raw
        if kind == "end":
            raise StopIteration
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            raw.record_stream(current)
            labels.record_stream(current)
        else:
            raw, labels = raw.to(self.device), labels.to(self.device)
        self._state = state
        return raw, labels

    # ------------------------------------------------------------------ stream interface
    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("DevicePrefetcher.load_state_dict: call it before the first batch is drawn")
        self.stream.load_state_dict(state)
        self._state = self.stream.state_dict()

    def counters(self) -> dict:
        return self.stream.counters()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    self._thread.join(timeout=0.1)
        self.stream.close()

    def __getattr__(self, name):  # Everything else (summary, resume_path, ...) from the wrapped stream.
        return getattr(self.stream, name)
