"""MLflow, through its client (MlflowClient: no process-wide active run, nothing read from the
command line). Without a tracking URI in the config or MLFLOW_TRACKING_URI, the run is recorded in
the run directory's own SQLite store (`sqlite:///<run>/mlflow.db`, artifacts beside it): MLflow 3
refuses the plain file store by default. `mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db`
shows it."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from runner.errors import UserError

DATABASE = "mlflow.db"
ARTIFACTS = "mlartifacts"
# MLflow's limits on one param (key and value length) and on one log_batch request.
MAX_KEY, MAX_VALUE = 250, 6000
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000


class MLflow:
    name = "mlflow"

    def __init__(self, plan, run_dir, run_id: str | None):
        settings = plan.tracking.mlflow
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise UserError("tracking.mlflow is set but mlflow is not installed", where="tracking.mlflow",
                            hint="pip install 'runner[mlflow]', or remove tracking.mlflow") from exc
        _quiet_loggers()
        token = plan.secret("tracking.mlflow.token")
        if token:
            os.environ["MLFLOW_TRACKING_TOKEN"] = token
        run_dir = Path(run_dir)
        given = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        local = not given
        self.uri = given or f"sqlite:///{run_dir / DATABASE}"
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.run_id, self.logged = self._open(plan, run_dir, run_id, local)
        except UserError:
            raise
        except Exception as exc:  # mlflow raises many types for connection, auth and store problems
            raise UserError(f"MLflow could not start: {exc}", where="tracking.mlflow",
                            hint="check tracking.mlflow.tracking_uri (or MLFLOW_TRACKING_URI) and the token, or "
                                 "leave tracking_uri null for the run's own SQLite store") from exc

    def _open(self, plan, run_dir: Path, run_id: str | None, local: bool):
        """(run id, {metric: last step logged}): the stored run continued, else a new run with the
        plan as its params."""
        from mlflow.exceptions import MlflowException

        from runner.train.trackers import run_parameters

        if run_id:
            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                run = None  # another tracking URI than the interrupted launch's: a new run
            if run is not None:
                self.client.update_run(run_id, status="RUNNING")
                logged = {key: max(m.step for m in self.client.get_metric_history(run_id, key))
                          for key in run.data.metrics}
                return run_id, logged
        name = plan.tracking.mlflow.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or plan.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} is deleted", where="tracking.mlflow.experiment",
                            hint="restore it (mlflow experiments restore) or name another experiment")
        if experiment is None:
            location = (run_dir / ARTIFACTS).as_uri() if local else None
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        tags = {**plan.tracking.mlflow.tags, "runner.plan_hash": plan.hashes.plan or "",
                "runner.config_hash": plan.hashes.config, "runner.data_hash": plan.hashes.data or ""}
        run = self.client.create_run(experiment_id, run_name=plan.tracking.mlflow.run_name or plan.name, tags=tags)
        self._log_params(run.info.run_id, run_parameters(plan, run_dir))
        return run.info.run_id, {}

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(_key(k), _value(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH], synchronous=True)

    def log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), float(v), now, step) for k, v in values.items()
                   if step > self.logged.get(_key(k), -1)]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + METRICS_PER_BATCH], synchronous=True)

    def finish(self, *, interrupted: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="KILLED" if interrupted else "FINISHED")


def _key(name: str) -> str:
    """A param or metric name as MLflow takes it: letters, digits, _ - . space / only."""
    return re.sub(r"[^\w\-. /]", "_", name)[:MAX_KEY]


def _value(value) -> str:
    text = str(value)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


def _quiet_loggers() -> None:
    """MLflow's store migrations log each step (alembic) on a new SQLite file: only with --debug."""
    import logging

    from runner import quiet

    if quiet.active():
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
