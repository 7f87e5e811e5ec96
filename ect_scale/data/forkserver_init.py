"""Imported only by the DataLoader's forkserver process, as a multiprocessing preload (`loader.start_forkserver`).

The forkserver lives as long as any process it forked holds its "alive" pipe, and the DataLoader workers it forks
watch only their own parent (the forkserver): without this, both outlived a training process killed with SIGKILL.
Here the forkserver exits as soon as the training process that started it is gone, and its workers, which set
a parent-death signal (`loader._worker_init`), die with it.
"""

from ect_scale.runtime.procs import exit_with_parent

exit_with_parent(pdeathsig=False)  # The thread that started us may end before the training process does.
