"""A real `runner serve` subprocess on a free localhost port, for the serve, chat and bench tests:
started with --port 0, its URL read from the one-line banner on stderr."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANNER = re.compile(r"serving (\S+) at (http://\S+/v1)")


def runner_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RUNNER_API_KEY", None)
    env.update(extra)
    return env


class Server:
    def __init__(self, path, *args: str, env: dict | None = None, timeout: float = 300):
        self.proc = subprocess.Popen([sys.executable, "-m", "runner", "serve", str(path), "--port", "0", *args],
                                     cwd=REPO, env=env or runner_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._banner = threading.Event()
        self.name = self.url = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._banner.wait(timeout) or self.url is None:
            self.proc.kill()
            raise RuntimeError("runner serve did not start:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            match = BANNER.search(line)
            if match and self.url is None:
                self.name, self.url = match.group(1), match.group(2)
                self._banner.set()
        self._banner.set()  # exited before the banner

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def wait_exit(self, timeout: float = 60) -> int:
        deadline = time.time() + timeout
        while self.proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        return self.proc.poll()
