"""Run a Python script or module unchanged and record, from inside its process, what it does not
report itself: the time of every optimizer step, peak allocated and reserved accelerator memory
after the warm-up steps, the device and the library versions, and the time to the first optimizer step.

    python bench/probe.py --out probe.json --warmup 3 [--cwd DIR] SCRIPT.py [args...]
    python bench/probe.py --out probe.json --warmup 5 -m runner train cfg.yaml [overrides...]

Step times come from torch's global optimizer-step hook (a public torch API), so runner's Trainer,
TRL's trainers and hand-written loops are timed by the same clock: on a GPU a CUDA event recorded
after each optimizer step (no host-device sync inside the run), on a CPU the host clock. The hook
also resets the peak-memory counters once the warm-up steps are done, as the shared baselines do.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import runpy
import sys
import time
import traceback

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "liger-kernel",
            "flash-attn", "deepspeed", "runner")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class StepClock:
    """Stamps each optimizer step; resets the peak-memory counters after `warmup` steps."""

    def __init__(self, warmup: int):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.warmup = warmup
        self.stamps = []
        self.peak_reset_at = None
        self.started = time.perf_counter()
        self.first_step_s = None

    def hook(self, optimizer, args, kwargs) -> None:
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            self.stamps.append(event)
        else:
            self.stamps.append(time.perf_counter())
        if len(self.stamps) == 1:
            # Time to first step: from the probe's start (before the target imports anything) until the
            # first optimizer step has run on the device; the one synchronisation of the run.
            if self.cuda:
                self.torch.cuda.synchronize()
            self.first_step_s = round(time.perf_counter() - self.started, 3)
        if len(self.stamps) == self.warmup and self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            self.peak_reset_at = self.warmup
        if self.profiler is not None:
            self.profiler.at_step(len(self.stamps))

    profiler = None

    def step_times(self) -> list[float]:
        """Seconds between consecutive optimizer steps (the first step has no predecessor)."""
        if self.cuda:
            self.torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.stamps, self.stamps[1:])]
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    def memory(self) -> dict:
        rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        if not self.cuda:
            return {"peak_allocated_gib": None, "peak_reserved_gib": None, "peak_rss_gib": round(rss_gib, 3)}
        t = self.torch.cuda
        return {"peak_allocated_gib": round(t.max_memory_allocated() / 2**30, 3),
                "peak_reserved_gib": round(t.max_memory_reserved() / 2**30, 3),
                "peak_rss_gib": round(rss_gib, 3)}

    def device(self) -> str:
        if self.cuda:
            return self.torch.cuda.get_device_name(0)
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


class StepProfiler:
    """BENCH_PROFILE=FIRST,LAST,FILE: torch.profiler over optimizer steps FIRST..LAST; FILE gets the
    host time of those steps, the accelerator's busy time (sum of kernel times) and the top kernels
    and operators. Busy time well under the host time means the step waits on Python launching work."""

    def __init__(self, spec: str):
        first, last, self.path = spec.split(",", 2)
        self.first, self.last = int(first), int(last)
        self.prof = None
        self.started = None

    def at_step(self, step: int) -> None:
        import torch

        if step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()
            self.started = time.perf_counter()
        elif step == self.last and self.prof is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            host = time.perf_counter() - self.started
            self.prof.__exit__(None, None, None)
            events = self.prof.key_averages()
            kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith(("CUDA", "PrivateUse1"))]
            busy = sum(e.self_device_time_total for e in kernels) / 1e6  # kernels only: ops would count twice
            steps = self.last - self.first
            lines = [f"steps {self.first}..{self.last}: host {host / steps:.4f} s/step, "
                     f"device busy {busy / steps:.4f} s/step ({busy / max(host, 1e-9):.0%})", ""]
            sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            lines.append(events.table(sort_by=sort, row_limit=45, max_name_column_width=90))
            with open(self.path, "w") as fh:
                fh.write("\n".join(lines))
            self.prof = None


class CudaGate:
    """bench/harness.py --overlap: the baseline sets up on the CPU while runner has the GPU.

    - Holds the process's CUDA initialisation until a file exists (runner's process has ended).
      torch initialises CUDA through torch.cuda._lazy_init, also when a tensor is first made on a
      CUDA device. A library that queries the device while it is being imported (bitsandbytes asks
      for the compute capability) is let through: holding it would hold the whole setup.
    - Records when this process first holds CUDA memory (`first_alloc_at`, epoch seconds), polled
      every 0.2 s, so the harness can tell whether the baseline used the GPU before runner ended."""

    def __init__(self, path: str):
        import threading

        import torch

        self.path, self.waited_s, self.first_alloc_at = path, 0.0, None
        original = torch.cuda._lazy_init

        def gated():
            if not torch.cuda.is_initialized() and not os.path.exists(path) and not _importing():
                start = time.monotonic()
                while not os.path.exists(path):
                    time.sleep(0.2)
                self.waited_s += time.monotonic() - start
            original()

        def watch():
            while self.first_alloc_at is None:
                if torch.cuda.is_initialized() and torch.cuda.memory_allocated() > 0:
                    self.first_alloc_at = time.time()
                time.sleep(0.2)

        torch.cuda._lazy_init = gated
        threading.Thread(target=watch, daemon=True).start()


def _importing() -> bool:
    """Whether the current call comes from a module being imported."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def run_target(module: str | None, target: list[str]) -> int:
    """Run the target as __main__ with its own argv; returns its exit code."""
    try:
        if module:
            sys.argv = [module, *target]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(target)
            sys.path.insert(0, os.path.dirname(os.path.abspath(target[0])))
            runpy.run_path(target[0], run_name="__main__")
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file the measurements are written to")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before the peak-memory reset")
    parser.add_argument("--cwd", help="directory to run the target in")
    parser.add_argument("-m", dest="module", help="run a module (like python -m)")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="script and its arguments, or the module's arguments")
    args = parser.parse_args(argv)
    if not args.module and not args.target:
        parser.error("name a script or -m MODULE")
    out = os.path.abspath(args.out)
    if args.target and not args.module:
        args.target[0] = os.path.abspath(args.target[0])
    if args.cwd:
        os.chdir(args.cwd)

    from torch.optim.optimizer import register_optimizer_step_post_hook

    clock = StepClock(args.warmup)
    if os.environ.get("BENCH_PROFILE"):
        clock.profiler = StepProfiler(os.environ["BENCH_PROFILE"])
    handle = register_optimizer_step_post_hook(clock.hook)
    gate = CudaGate(os.environ["BENCH_CUDA_GATE"]) if os.environ.get("BENCH_CUDA_GATE") else None
    started = time.time()
    error = None
    try:
        code = run_target(args.module, args.target)
    except BaseException as exc:  # recorded, then re-raised after the result file is written
        error = exc
        code = 1
        traceback.print_exc()
    handle.remove()
    result = {"exit_code": code, "error": None if error is None else f"{type(error).__name__}: {error}"[:2000],
              "warmup": args.warmup, "optimizer_steps": len(clock.stamps), "step_times_s": clock.step_times(),
              "first_step_s": clock.first_step_s,
              "wall_s": round(time.time() - started, 3), "device": clock.device(), "versions": versions(),
              **clock.memory()}
    if gate is not None:
        result["cuda_gate_waited_s"] = round(gate.waited_s, 1)
        result["cuda_first_alloc_at"] = gate.first_alloc_at
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    if isinstance(error, KeyboardInterrupt):
        raise error
    return code


if __name__ == "__main__":
    sys.exit(main())
