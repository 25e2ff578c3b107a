"""bench/probe.py for GRPO: also times generation. TRL's GRPOTrainer generates in `_generate` (a
private method, wrapped here from outside the process's code: runner and the baseline run
unchanged) and trains between generations; the probe records, per generation, its seconds (the
device synchronised at both ends) and the prompt and completion tokens it returned.

    python bench/grpo_probe.py --out probe.json --warmup 2 -m runner train cfg.yaml [overrides...]
    python bench/grpo_probe.py --out probe.json --warmup 2 bench/baselines/grpo1b_baseline.py ARGS...

The JSON holds probe.py's fields plus `generations`: [{"s", "prompt_tokens", "completion_tokens"}]."""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import probe  # noqa: E402


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _tokens(ids) -> int:
    return sum(len(x) for x in ids)


def wrap_generation(records: list) -> None:
    import trl

    real = trl.GRPOTrainer._generate

    def timed(self, prompts):
        _sync()
        start = time.perf_counter()
        out = real(self, prompts)
        _sync()
        records.append({"s": time.perf_counter() - start, "prompt_tokens": _tokens(out[0]),
                        "completion_tokens": _tokens(out[1])})
        return out

    trl.GRPOTrainer._generate = timed


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = os.path.abspath(argv[argv.index("--out") + 1])
    records: list = []
    wrap_generation(records)
    code = probe.main(argv)
    result = json.loads(open(out).read())
    result["generations"] = records
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
