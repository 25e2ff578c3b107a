"""One owner per run directory: an exclusive flock on `<run dir>/.runner-lock`, held for the run's
life by the process that launched it (rank 0 of machine 0; `runner launch` holds it for its
workers). The kernel drops a flock when its holder exits, however it exits, so a lock left by a
killed run is no lock at all: nothing to clean up, nothing to guess from pids. Beside the lock
the holder writes who it is (pid, host, start time), for the message a second launch gets.

flock works between processes on one machine and on local filesystems; on NFS it is emulated
with byte-range locks whose behaviour depends on the server and client (docs/reliability.md)."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError

LOCK_FILE = ".runner-lock"
# Set by `runner launch` for its workers: the pid that holds the lock on their behalf.
HOLDER_ENV = "RUNNER_LOCK_HOLDER"


@dataclass
class RunLock:
    path: Path
    fd: int | None  # None: held for us by the `runner launch` above this process (or not supported)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None


def _ancestors() -> set[int]:
    """Pids of this process's parents, from /proc (empty where there is none)."""
    found, pid = set(), os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
        found.add(pid)
    return found


def read_holder(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "a process that has not written its name yet"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder['pid']} on {holder.get('host', '?')} (started {started}: {holder.get('command', '')})"


def acquire(run_dir) -> RunLock:
    """Take the run directory's lock or refuse (UserError) naming the process that holds it."""
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            print(f"warning: {path.parent}'s filesystem does not support locks ({err.strerror}): a second launch "
                  "on this run directory would not be refused", file=sys.stderr)
            return RunLock(path, None)
        holder = read_holder(run_dir)
        launcher = os.environ.get(HOLDER_ENV, "")
        if launcher.isdigit() and holder.get("pid") == int(launcher) and holder.get("host") == socket.gethostname() \
                and int(launcher) in _ancestors():
            return RunLock(path, None)  # our own `runner launch` holds it for its workers
        raise UserError(f"output directory {path.parent} is in use by another launch: {describe(holder)}",
                        where="output.dir",
                        hint="wait for that run to end or stop it; two launches on one run directory would "
                             "overwrite each other's checkpoints and metrics") from None
    words = [a for a in sys.argv[1:3] if "=" not in a]  # never an override: its value may be a secret
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join(["runner", *words])[:200]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return RunLock(path, fd)
