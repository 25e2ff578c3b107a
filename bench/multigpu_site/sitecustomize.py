"""Put on the workers' PYTHONPATH by bench/multigpu.py: when RUNNER_BENCH_RANK_DIR is set, the rank
probe (bench/multigpu.py: install_rank_probe) is installed as soon as a worker imports runner.train.command,
so launchers and other processes pay nothing."""

import importlib.util
import os
import sys

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rank_probe(module):
    sys.path.insert(0, BENCH)
    import multigpu

    multigpu.install_rank_probe()


if os.environ.get("RUNNER_BENCH_RANK_DIR"):
    spec = importlib.util.spec_from_file_location("runner_bench_after_import", os.path.join(BENCH, "after_import.py"))
    after_import = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(after_import)
    after_import.install("runner.train.command", _rank_probe)
