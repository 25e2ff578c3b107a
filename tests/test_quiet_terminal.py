"""A quiet terminal: a run prints runner's own lines (progress, parameter counts, where the run is)
and nothing from the libraries underneath, unless --debug asks for them. The quickstart runs for
real here (the SmolLM2 GGUF from its package, `python -m runner train`), and every line it prints
must match the allow-list below."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.tiny_model import save_tiny_model, write_config

REPO = Path(__file__).resolve().parents[1]

# Every line runner itself prints on a plain quickstart run. tqdm redraws its bar with "\r": each
# redraw is checked as a line of its own.
RUNNER_LINES = [
    r"train: +\d+%\|[^|]*\| *\d+/\d+ \[[^\]]*\]",  # metrics.py's progress bar
    r"trainable params: [\d,]+ / total [\d,]+ \(\d+\.\d+%\)",  # adapters.print_parameters
    r"finished: \d+ steps?, final train loss \S+(, eval loss \S+)?",  # train.run's summary
    r"run directory: \S+",
    r"warning: \d+ of \d+ train (rows|samples) .*",  # data.stats: rows cut by sequence.max_length
]


def library_lines(text: str) -> list[str]:
    lines = [part.strip() for line in text.splitlines() for part in line.split("\r")]
    return [line for line in lines if line and not any(re.fullmatch(p, line) for p in RUNNER_LINES)]


def runner_cli(*args, env_extra=None, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    # WANDB_MODE=offline with tracking off once made transformers print "[INFO] Running in WANDB offline mode".
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline",
               **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_allow_list_catches_library_lines():
    noise = ("Failed to load CPU gemm_4bit_forward from kernels-community: ...\n"
             "Converting and de-quantizing GGUF tensors...:   5%|▍  | 13/272 [00:01<00:20, 12.1it/s]\r"
             "train:  50%|█████     | 1/2 [00:03<00:03,  3.10s/step, loss=2.1]\n"
             "/x/transformers/training_args.py:1541: FutureWarning: `gradient_checkpointing` is deprecated\n"
             "[INFO] Running in WANDB offline mode\n"
             "run directory: outputs/quickstart\n")
    assert library_lines(noise) == [
        "Failed to load CPU gemm_4bit_forward from kernels-community: ...",
        "Converting and de-quantizing GGUF tensors...:   5%|▍  | 13/272 [00:01<00:20, 12.1it/s]",
        "/x/transformers/training_args.py:1541: FutureWarning: `gradient_checkpointing` is deprecated",
        "[INFO] Running in WANDB offline mode",
    ]


@pytest.mark.slow
def test_quickstart_prints_only_runner_lines_and_fits_one_screen(tmp_path):
    out = runner_cli("train", "cookbook/quickstart.yaml", f"output.dir={tmp_path / 'quickstart'}",
                     f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=2", "training.micro_batch_size=2")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert library_lines(text) == [], text[-4000:]
    assert len(text.splitlines()) <= 8, text
    assert "finished: 2 steps, final train loss" in text
    # The quickstart's second command: the answer on stdout, nothing else anywhere.
    answer = runner_cli("generate", str(tmp_path / "quickstart"), "-p", "Who are you?", "--max-new-tokens", "8")
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert answer.stderr == "" and answer.stdout.strip(), answer.stdout + answer.stderr


def _smol_config(tmp_path):
    from tests.test_data_support import SHARED, write_config as write_smol_config

    rows = json.loads((SHARED / "alpaca_en_demo.json").read_text())[:50]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    return write_smol_config(tmp_path, [{"path": "rows.json", "format": "alpaca"}])


def test_preprocess_and_deep_lint_print_only_runner_lines(tmp_path):
    """Both load the tokenizer and import trl for the template (and, through them, torchao where it
    is installed, whose import made torch print deprecation notices)."""
    cfg = _smol_config(tmp_path)
    out = runner_cli("preprocess", str(cfg))
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line for line in out.stderr.splitlines() if not line.startswith("cache: built ")] == [], out.stderr
    assert out.stdout.startswith("data hash ") and "50 read, 50 kept" in out.stdout, out.stdout
    lint = runner_cli("lint", "--deep", str(cfg))
    assert lint.returncode == 0 and lint.stderr == "" and lint.stdout == f"ok: {cfg}\n", lint.stdout + lint.stderr


def test_debug_lets_the_library_lines_through(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 1})
    quiet = runner_cli("train", str(cfg))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert library_lines(quiet.stdout + quiet.stderr) == []
    loud = runner_cli("train", str(cfg), "output.overwrite=true", "--debug")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "Loading weights" in loud.stderr  # transformers' own bar, shown only with --debug


def test_torch_warnings_stay_quiet_after_dynamo_loads():
    # torchao (imported by transformers wherever it is installed) loads torch._dynamo, which reset the
    # "torch" logger to WARNING: its pytree deprecation notices reached every run's terminal.
    code = ("import logging\nfrom runner import quiet\nquiet.quiet_libraries(False)\nimport torch._dynamo\n"
            "logging.getLogger('torch.utils._pytree').warning('library notice')\n"
            "print(logging.getLogger('torch').level)")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_LOGS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "library notice" not in out.stderr and out.stdout.strip() == "40", out.stdout + out.stderr
    debug = code.replace("quiet_libraries(False)", "quiet_libraries(True)")
    out = subprocess.run([sys.executable, "-c", debug], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300)
    assert "library notice" in out.stderr, out.stdout + out.stderr


def test_liger_backend_notices_stay_quiet():
    # At its first kernel call Liger logs one warning per optional backend it cannot import (CuTe DSL,
    # Ascend) through its module loggers; its Triton kernels, the ones runner uses, are unaffected.
    code = ("import logging\nfrom runner import quiet\nquiet.quiet_libraries({debug})\n"
            "logging.basicConfig()\n"
            "logging.getLogger('liger_kernel.backends.registry').warning('Backend impl could not be imported')")
    for debug, shown in ((False, False), (True, True)):
        out = subprocess.run([sys.executable, "-c", code.format(debug=debug)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert ("could not be imported" in out.stderr) is shown, out.stderr


def test_smoke_run_building_its_tiny_model_prints_only_runner_lines(tmp_path):
    # The tiny model is built and saved before the plan exists: its save bar and the libraries'
    # import notices once reached the terminal there.
    data = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"  # as tests/test_data_support.SHARED
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{path: meta-llama/Llama-3.1-8B}}\nadapter: {{kind: lora, r: 4}}\n"
                   f"datasets:\n  - {{path: {data}, format: alpaca, num_samples: 8}}\n"
                   f"data: {{cache_dir: {tmp_path / 'cache'}}}\n")
    out = runner_cli("train", str(cfg), "--smoke")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "cache" / "smoke" / "llama").is_dir()  # built in this run
    assert library_lines(out.stdout + out.stderr) == [], out.stdout + out.stderr


def test_two_processes_print_each_line_once(tmp_path):
    # Before: the plan's warning three times (launcher and each rank), library lines twice.
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 1, "warmup_steps": 1, "warmup_ratio": 0.1})
    out = runner_cli("launch", str(cfg), "--cpu", "--num-processes", "2", env_extra={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert text.count("warmup_steps is set and wins over warmup_ratio") == 1, text
    assert text.count("trainable params:") == 1 and text.count("finished: 1 step,") == 1, text
    own = [line for line in library_lines(text)
           if not line.startswith(("warning: ", str(tmp_path / "run")))]  # runner's lines naming the run dir
    assert own == [], text


def test_a_run_without_bitsandbytes_features_never_imports_it(tmp_path):
    # PEFT imports bitsandbytes whenever it is installed; its import looks up a kernel on the hub
    # and, on CPUs with AVX512-BF16, prints "Failed to load CPU gemm_4bit_forward ...".
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 1})
    probe = ("import sys\nfrom runner.cli import main\ncode = main(['train', sys.argv[1]])\n"
             "print('bitsandbytes imported:', sys.modules.get('bitsandbytes') is not None)\nsys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", probe, str(cfg)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bitsandbytes imported: False" in out.stdout
    assert (tmp_path / "run" / "RUN_COMPLETE").is_file()


def test_bitsandbytes_counts_as_needed_for_quantization_8bit_optimizers_and_prequantized_bases(tmp_path):
    from runner.plan.resolve import make_plan
    from runner.quiet import bitsandbytes_needed

    model_dir = save_tiny_model(tmp_path / "model")
    plain = make_plan(write_config(tmp_path, model_dir))
    assert not bitsandbytes_needed(plain, training=True)
    assert not bitsandbytes_needed(make_plan(REPO / "cookbook" / "quickstart.yaml"), training=True)
    assert bitsandbytes_needed(make_plan(write_config(tmp_path, model_dir, training={"optimizer": "adamw_8bit"})),
                               training=True)
    qlora = make_plan(write_config(tmp_path, model_dir, extra={"quantization": {"bits": 4}}))
    assert bitsandbytes_needed(qlora, training=True)
    assert not bitsandbytes_needed(qlora, training=False)  # generate / merge load the base unquantized
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (model_dir / "config.json").write_text(json.dumps(config))
    assert bitsandbytes_needed(make_plan(write_config(tmp_path, model_dir)), training=False)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_arguments_use_no_deprecated_name(tmp_path, checkpointing):
    from situations import runtime

    from runner.plan.resolve import make_plan
    from runner.train import stages
    from runner.train.arguments import common_arguments

    model_dir = save_tiny_model(tmp_path / "model")
    plan = make_plan(write_config(tmp_path, model_dir, training={"gradient_checkpointing": checkpointing}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        common = common_arguments(plan, runtime(plan), output_dir=str(tmp_path / "out"), has_eval=False)
        args = stages.get("sft").arguments(plan, common)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert args.gradient_checkpointing is checkpointing  # the old name mirrors the new one
    assert args.activation_checkpointing is checkpointing


def test_saving_an_adapter_on_a_gguf_base_asks_peft_nothing(tmp_path, smollm_dir):
    # PEFT's "auto" looks for the base's config.json to see whether the vocabulary grew; a GGUF
    # folder has none: "Could not find a config file ... will assume that the vocabulary was not modified".
    from safetensors import safe_open

    from situations import adapted

    from runner.plan.resolve import make_plan
    from runner.train.adapters import save_adapter

    import yaml

    quickstart = yaml.safe_load((REPO / "cookbook" / "quickstart.yaml").read_text())
    quickstart["adapter"].update(target_modules=["q_proj"], r=2)
    quickstart["datasets"][0]["path"] = str((REPO / "cookbook" / quickstart["datasets"][0]["path"]).resolve())
    quickstart["output"]["dir"] = str(tmp_path / "out")
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(quickstart))
    plan = make_plan(cfg)
    model, _ = adapted(plan)
    for resized in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            save_adapter(model, str(tmp_path / f"adapter-{resized}"), embeddings_resized=resized)
        assert [str(w.message) for w in caught if "config file" in str(w.message)] == []
        with safe_open(str(tmp_path / f"adapter-{resized}" / "adapter_model.safetensors"), "pt") as fh:
            assert any("embed_tokens" in k for k in fh.keys()) is resized


def test_wandb_says_where_its_run_is_and_prints_no_tables(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2},
                       extra={"tracking": {"log_every": 1, "progress_bar": False,
                                           "wandb": {"project": "runner-tests", "mode": "offline"}}})
    out = runner_cli("train", str(cfg), env_extra={"WANDB_SILENT": "false"})
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert f"Run data is saved locally in {tmp_path / 'run' / 'wandb'}" in text  # where the run is
    assert "Run history" not in text and "Run summary" not in text and "Tracking run with wandb version" not in text
    assert [line for line in library_lines(text) if not line.startswith("wandb:")] == [], text
