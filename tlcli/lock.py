"""One run dir, one writer: an exclusive lock held for the whole run.

The lock is an OS file lock (filelock: flock on POSIX), so it is released by the kernel
on any exit, a SIGKILL included, and a dead holder never leaves a stale lock behind. Who
holds it (pid, host, start time) is written to a separate file after the lock is taken:
opening the lock file itself truncates it, which would erase the holder's details.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from tlcli.errors import ConfigError

LOCK_NAME = ".tlcli.lock"
HOLDER_NAME = ".tlcli.lock.json"
_held: dict[Path, object] = {}  # run dir -> the FileLock this process holds (re-entrant per dir)


def _holder(run_dir: Path) -> str:
    try:
        info = json.loads((run_dir / HOLDER_NAME).read_text())
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process whose pid and host could not be read"


def launched_rank_zero() -> bool:
    """Whether this process is global rank 0 as its launcher (torchrun, srun, Lightning's DDP
    launcher) set it; read from the environment, so nothing heavy is imported."""
    from tlcli.training.distributed import launched_rank_zero

    return launched_rank_zero()


def acquire(run_dir: str | Path, key: str = "hydra.run.dir") -> bool:
    """Lock `run_dir` for this process; ConfigError (exit 2) when another run holds it.

    True when this call took the lock, False when this process already held it."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir).expanduser().absolute()
    if run_dir in _held:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"{key}={run_dir} is in use by another tlcli run ({_holder(run_dir)}): wait for it to finish, "
            f"or give this run its own directory ({key}=ANOTHER_DIR)"
        ) from None
    _held[run_dir] = lock  # kept referenced: the lock lives until the process exits
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    (run_dir / HOLDER_NAME).write_text(json.dumps(info) + "\n")
    return True


def release(run_dir: str | Path) -> None:
    """Give the lock back early (in-process callers: tests, sweeps); exiting does the same."""
    run_dir = Path(run_dir).expanduser().absolute()
    lock = _held.pop(run_dir, None)
    if lock is not None:
        (run_dir / HOLDER_NAME).unlink(missing_ok=True)
        lock.release()
