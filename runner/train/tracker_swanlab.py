"""SwanLab, in offline mode by default: the run is written under the run directory's swanlog/ folder
and uploaded later with `swanlab sync`. A resumed launch continues the same run id; SwanLab writes
each launch into a folder of its own (`swanlog/run-<time>-<id>/`), all of them under that one id
(sync each with `swanlab sync -i <id> FOLDER`, oldest first). The steps an earlier launch already
recorded are read back with SwanLab's own reader (the one `swanlab sync` uses) so that none is
logged twice."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from runner.errors import UserError

FOLDER = "swanlog"


def start_swanlab(plan, run_dir, run_id: str | None):
    """The open SwanLab run, or None when its mode is disabled."""
    settings = plan.tracking.swanlab
    mode = os.environ.get("SWANLAB_MODE") or settings.mode
    if mode == "disabled":
        return None
    try:
        import swanlab
    except ImportError as exc:
        raise UserError("tracking.swanlab is set but swanlab is not installed", where="tracking.swanlab",
                        hint="pip install 'runner[swanlab]', or remove tracking.swanlab") from exc
    key = plan.secret("tracking.swanlab.api_key")
    if key and mode == "online":  # offline and local runs never log in
        os.environ["SWANLAB_API_KEY"] = key
    if mode == "online" and not os.environ.get("SWANLAB_API_KEY"):
        raise UserError("tracking.swanlab.mode is online but no SwanLab API key is set", where="tracking.swanlab",
                        hint="export SWANLAB_API_KEY=..., or use mode: offline and `swanlab sync` later")
    return SwanLab(swanlab, plan, Path(run_dir), mode, run_id)


class SwanLab:
    name = "swanlab"

    def __init__(self, swanlab, plan, run_dir: Path, mode: str, run_id: str | None):
        from runner.train.trackers import run_config

        settings = plan.tracking.swanlab
        log_dir = run_dir / FOLDER
        self.logged = logged_steps(log_dir, run_id) if run_id else {}
        # SwanLab records the command line from the operating system's copy (/proc/self/cmdline),
        # which runner's redaction of sys.argv cannot reach: with a secret in it, that record is off.
        secret_in_command = _command_holds(plan.secrets)
        if secret_in_command:
            print("note: a secret is on the command line: SwanLab does not record the command or runtime "
                  "(give secrets as ${env:NAME} in the config)", file=sys.stderr)
        try:
            self.run = swanlab.init(
                project=settings.project, workspace=settings.workspace, name=settings.name or plan.name,
                tags=list(settings.tags), mode=mode, log_dir=str(log_dir), config=run_config(plan, run_dir),
                id=run_id, resume="allow" if run_id else None, reinit=True,
                settings=swanlab.Settings(probe={"runtime": False}) if secret_in_command else None)
        except Exception as exc:  # swanlab raises many types for network and auth problems
            raise UserError(f"SwanLab could not start: {exc}", where="tracking.swanlab",
                            hint="check the network / key, or use mode: offline") from exc
        self.run_id = self.run.id

    def log(self, values: dict, step: int) -> None:
        fresh = {k: v for k, v in values.items() if step > self.logged.get(k, -1)}
        if fresh:
            self.run.log(fresh, step=step)

    def finish(self, *, interrupted: bool = False) -> None:
        if interrupted:
            self.run.finish(state="crashed", error="interrupted: resume with the same command")
        else:
            self.run.finish()


def logged_steps(log_dir: Path, run_id: str) -> dict:
    """{metric: last step} over the records of every earlier launch of this run id."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    last: dict = {}
    for path in sorted(log_dir.glob(f"run-*/run-{run_id}.swanlab")):
        reader = DataStoreReader()
        try:
            reader.open(path)
        except Exception:
            continue  # a launch killed before its header was written
        try:
            for data in reader:  # stops at a torn last record (a killed launch)
                record = Record()
                record.ParseFromString(data)
                kind = record.WhichOneof("record_type")
                if kind in ("scalar", "media"):
                    item = getattr(record, kind)
                    last[item.key] = max(last.get(item.key, -1), item.step)
        finally:
            reader.close()
    return last



def _command_holds(secrets: dict) -> bool:
    """Whether this process's command line, as the operating system keeps it, holds a secret value."""
    from runner.train.redaction import MIN_SEARCHED

    values = [v.encode() for v in secrets.values() if isinstance(v, str) and len(v) >= MIN_SEARCHED]
    if not values:
        return False
    try:
        with open("/proc/self/cmdline", "rb") as fh:
            command = fh.read()
    except OSError:
        command = " ".join(sys.argv).encode()  # where there is no /proc, SwanLab reads sys.argv (redacted)
    return any(v in command for v in values)
