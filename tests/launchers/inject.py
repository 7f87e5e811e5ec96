"""`launchers/train.py` with a failure injected into one rank's second training step (tests only).

    python tests/launchers/inject.py FAIL_RANK KIND HANG_RANK -- <launchers/train.py arguments>

KIND: `oom` raises CUDA's out-of-memory error, `bug` a ZeroDivisionError (an unexpected exception),
`stuck-read` makes the rank's second data read block forever (a read from a store that stopped answering; the
other ranks then wait for it in the step's collective). On HANG_RANK (-1 for none) the same step blocks forever
outside any collective, like a rank stuck in a GPU wait: only the peer watch can stop it.
"""

import os
import runpy
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inject(fail_rank: int, kind: str, hang_rank: int) -> None:
    import torch

    from ect_scale.runtime import dist
    from ect_scale.train.trainer import Trainer

    real_step = Trainer.train_step
    real_init = Trainer.__init__

    def stuck_after(batches, n: int):
        for i, batch in enumerate(batches):
            if i == n:
                time.sleep(3600)  # The read that never returns.
            yield batch

    def init(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        if kind == "stuck-read" and dist.get_rank() == fail_rank:
            self._data_iter = stuck_after(self._data_iter, 1)

    def train_step(self) -> None:
        if kind == "stuck-read":
            return real_step(self)
        if self.state.steps == 1 and dist.get_rank() == fail_rank:
            if kind == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 1; 79.2 GiB total)")
            raise ZeroDivisionError("injected bug")
        if self.state.steps == 1 and dist.get_rank() == hang_rank:
            time.sleep(3600)
        real_step(self)

    Trainer.train_step = train_step
    Trainer.__init__ = init


if __name__ == "__main__":
    fail, what, hang = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    inject(fail, what, hang)
    sys.argv = [os.path.join(REPO, "launchers", "train.py")] + sys.argv[sys.argv.index("--") + 1 :]
    sys.exit(runpy.run_path(sys.argv[0], run_name="__train__")["main"]())
