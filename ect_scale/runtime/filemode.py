"""File modes: what we write is readable by the people sharing a data set or a run folder.

Files made through APIs that create them privately (`tempfile.mkstemp`, safetensors' `save_file`) are 0600.
`make_shareable` gives them the mode of a normally created file: 0666 minus the umask (0644 with the usual umask
022). Folders are made with `os.makedirs` (0777 minus the umask: 0755).
"""

from __future__ import annotations

import os


def current_umask() -> int:
    """This process's umask, read without changing it (Linux: /proc; elsewhere a brief set-and-restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(path: str) -> None:
    """Give the local file `path` the mode a normally created file would have (0666 minus the umask)."""
    os.chmod(path, 0o666 & ~current_umask())
