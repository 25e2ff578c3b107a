"""TensorBoard: event files in the run's tensorboard/ folder (`tensorboard --logdir RUN/tensorboard`).
The folder is the run: a resumed launch writes into it again, and its writer's purge_step makes
TensorBoard's readers drop what an earlier launch logged from the first step trained again (a fresh
launch purges from step 0: a failed attempt before it leaves nothing behind)."""
from __future__ import annotations

from pathlib import Path

from runner.errors import UserError

FOLDER = "tensorboard"


class TensorBoard:
    name = "tensorboard"

    def __init__(self, plan, run_dir, resume_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError("tracking.tensorboard is on but tensorboard is not installed", where="tracking.tensorboard",
                            hint="pip install 'runner[tensorboard]', or set tracking.tensorboard: false") from exc
        from runner.train.trackers import run_parameters

        self.dir = Path(run_dir) / FOLDER
        self.run_id = FOLDER  # the run is its folder in the run directory
        first = 0 if resume_step is None else resume_step + 1
        # flush_secs: a killed launch loses at most what it logged since the last flush (log() flushes too).
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=first, flush_secs=10)
        if resume_step is None:
            self._write_parameters(run_parameters(plan, run_dir))

    def _write_parameters(self, params: dict) -> None:
        """The HParams dashboard's session for this run, in the run's own folder (add_hparams would
        open a sub-run of its own), and the hashes as text."""
        from torch.utils.tensorboard.summary import hparams

        experiment, start, end = hparams(params, {})
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary, 0)
        hashes = {k: v for k, v in params.items() if k.startswith("hashes.")}
        self.writer.add_text("runner/hashes", "\n\n".join(f"{k}: `{v}`" for k, v in hashes.items()), 0)
        self.writer.flush()

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, *, interrupted: bool = False) -> None:
        self.writer.close()
