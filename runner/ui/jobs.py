"""Commands the UI starts: the same `python -m runner COMMAND ...` a terminal runs, in the workspace,
with stdout and stderr in a log under .runner-ui/logs. Records are kept in .runner-ui/jobs.json so a
restarted UI still knows how to resume a run it started. Stop is SIGTERM: `runner train` finishes
its step, writes a complete checkpoint and exits 75."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from runner.errors import UserError
from runner.rundir.layout import write_json

LOG_TAIL_BYTES = 64 * 1024


@dataclass
class Job:
    id: str
    command: str  # train, eval, predict, merge, export, push
    argv: list
    run: str | None  # the run directory, workspace-relative
    log: str
    started: float = field(default_factory=time.time)
    ended: float | None = None
    exit_code: int | None = None
    pid: int | None = None
    config: str | None = None

    @property
    def running(self) -> bool:
        return self.ended is None and self.pid is not None

    def summary(self) -> dict:
        return {"id": self.id, "command": self.command, "run": self.run, "running": self.running,
                "exit_code": self.exit_code, "started": self.started, "ended": self.ended,
                "argv": ["runner", *self.argv]}


class Jobs:
    def __init__(self, ws):
        self.ws = ws
        self.jobs: dict[str, Job] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._record = ws.ui_dir() / "jobs.json"
        self._load()
        self._ids = itertools.count(len(self.jobs) + 1)

    def _load(self) -> None:
        try:
            for item in json.loads(self._record.read_text()):
                job = Job(**item)
                if job.ended is None:  # a job of an earlier UI process: its state is in its run dir now
                    job.ended, job.pid = job.ended or time.time(), None
                self.jobs[job.id] = job
        except (OSError, ValueError, TypeError):
            pass

    def _save(self) -> None:
        write_json(self._record, [asdict(j) for j in self.jobs.values()])

    def start(self, command: str, argv: list, *, run: str | None = None, config: str | None = None) -> Job:
        with self._lock:
            if run is not None and any(j.running and j.run == run for j in self.jobs.values()):
                raise UserError(f"{run} already has a command running", hint="wait for it or stop it first")
            job_id = f"{next(self._ids)}-{command}"
            log = self.ws.ui_dir("logs") / f"{job_id}.log"
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
            with open(log, "wb") as fh:  # the child keeps its own handle
                proc = subprocess.Popen([sys.executable, "-m", "runner", *argv], cwd=self.ws.root, env=env,
                                        stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            job = Job(job_id, command, list(argv), run, self.ws.rel(log), pid=proc.pid, config=config)
            self.jobs[job_id], self.procs[job_id] = job, proc
            self._save()
        threading.Thread(target=self._wait, args=(job, proc), daemon=True).start()
        return job

    def _wait(self, job: Job, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            job.exit_code, job.ended = code, time.time()
            self._save()

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise UserError(f"no job {job_id!r}", hint="GET /api/jobs lists them")
        return self.jobs[job_id]

    def for_run(self, run: str) -> Job | None:
        """The newest job of a run (the running one if any)."""
        mine = [j for j in self.jobs.values() if j.run == run]
        return next((j for j in mine if j.running), mine[-1] if mine else None)

    def last_train(self, run: str) -> Job | None:
        return next((j for j in reversed(list(self.jobs.values())) if j.run == run and j.command == "train"), None)

    def stop(self, job: Job) -> None:
        proc = self.procs.get(job.id)
        if not job.running or proc is None:
            raise UserError(f"job {job.id} is not running")
        proc.send_signal(signal.SIGTERM)  # only the runner process: it stops its own workers

    def log_tail(self, job: Job, size: int = LOG_TAIL_BYTES) -> str:
        path = self.ws.root / job.log
        if not path.is_file():
            return ""
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode("utf-8", errors="replace")

    def stop_all(self) -> None:
        for job_id, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
