"""Put on the workers' PYTHONPATH by bench/multigpu.py: when RUNNER_BENCH_RANK_DIR is set, the rank
probe (bench/multigpu.py: install_rank_probe) is installed as soon as a worker imports runner.train,
so launchers and other processes pay nothing."""

import importlib.abc
import importlib.util
import os
import sys


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "runner.train":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            import multigpu

            multigpu.install_rank_probe()

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("RUNNER_BENCH_RANK_DIR"):
    sys.meta_path.insert(0, _AfterImport())
