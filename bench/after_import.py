"""Run a hook right after a module is first imported, in processes started by others (workers of
torchrun / accelerate): the sitecustomize files of bench/multigpu_site and of the distributed tests
install it, so launchers and processes that never import the module pay nothing. Loaded by file
path (the bench folder is not put on sys.path of the workers)."""

import importlib.abc
import importlib.util
import sys


class AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, target: str, hook):
        self.target, self.hook = target, hook

    def find_spec(self, name, path, target=None):
        if name != self.target:
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
            self.hook(module)

        spec.loader.exec_module = exec_module
        return spec


def install(target: str, hook) -> None:
    """`hook(module)` runs once `target` has been executed."""
    sys.meta_path.insert(0, AfterImport(target, hook))

