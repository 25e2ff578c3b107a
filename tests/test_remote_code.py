"""A model that ships its own code (config.json `auto_map` to .py files beside it) without
`model.trust_remote_code: true`: the plan refuses it naming the key and what setting it means (read
from config.json, no transformers import), and a load that still meets transformers' refusal (a custom
tokenizer folder, a plan made elsewhere) gives the same error instead of a traceback. runner never
turns the setting on itself. The folders are real: tiny Llama weights behind a custom model_type whose
classes live in configuration_tiny.py / modeling_tiny.py, loadable with the setting on."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.errors import ConfigErrors, UserError
from runner.plan.resolve import make_plan
from tests.tiny_model import save_tiny_model
from tests.tiny_tokenizer import save_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "fixtures" / "configs" / "data" / "alpaca_small.json"
TINY = REPO / "tests" / "fixtures" / "configs" / "tiny-model"
AUTO_MAP = {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}


def _with_config(directory: Path, **changes) -> Path:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory) -> Path:
    d = save_tiny_model(tmp_path_factory.mktemp("custom") / "tiny-custom")
    (d / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyConfig(LlamaConfig):\n    model_type = 'tiny_custom'\n")
    (d / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny import TinyConfig\n\n\n"
        "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n")
    return _with_config(d, model_type="tiny_custom", architectures=["TinyForCausalLM"], auto_map=AUTO_MAP)


@pytest.fixture(scope="module")
def custom_tokenizer(tmp_path_factory) -> Path:
    """A tokenizer folder whose class is its own (tokenizer_config.json auto_map), no config.json."""
    d = tmp_path_factory.mktemp("custom-tok") / "tok"
    save_tiny_tokenizer(d)
    (d / "tokenization_tiny.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\nclass TinyTokenizerFast(PreTrainedTokenizerFast):\n    pass\n")
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    tok_cfg.update(tokenizer_class="TinyTokenizerFast", auto_map={"AutoTokenizer": [None, "tokenization_tiny.TinyTokenizerFast"]})
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return d


def config_for(tmp_path: Path, model: Path, trust: bool = False, tokenizer: Path | None = None) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(f"""\
        model:
          path: {model}
          trust_remote_code: {str(trust).lower()}
          tokenizer: {tokenizer or 'null'}
        datasets:
          - {{path: {DATA}}}
        """))
    return path


def run(*args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})})


def test_plan_refuses_custom_code_without_the_setting_and_imports_no_ml_library(tmp_path, custom_model):
    cfg = config_for(tmp_path, custom_model)
    script = textwrap.dedent(f"""\
        import sys
        from runner.cli import main
        code = main(["lint", {str(cfg)!r}])
        heavy = [m for m in ("torch", "transformers") if m in sys.modules]
        print("CODE", code, "HEAVY", heavy, file=sys.stderr)
        """)
    proc = run("-c", script, cwd=tmp_path)
    err = proc.stderr
    assert "CODE 2 HEAVY []" in err, err
    assert "cfg.yaml:2:" in err and "model.trust_remote_code" in err, err
    assert "auto_map" in err or "its own Python code" in err, err
    assert "run the Python files" in err and "never turns it on" in err, err
    assert "Traceback" not in err


def test_the_same_folder_loads_when_the_setting_is_on(tmp_path, custom_model):
    """The folder really is custom code: with the setting it loads the class from modeling_tiny.py."""
    cfg = config_for(tmp_path, custom_model, trust=True)
    script = textwrap.dedent(f"""\
        from runner.plan.resolve import make_plan
        from runner.train.model import load_model
        model = load_model(make_plan({str(cfg)!r}), dtype="float32", attn_implementation="sdpa")
        print("CLASS", type(model).__module__, type(model).__name__)
        """)
    proc = run("-c", script, cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "modeling_tiny TinyForCausalLM" in proc.stdout, proc.stdout


def test_a_load_that_meets_transformers_refusal_names_the_key(tmp_path, custom_model):
    from runner.train.model import load_model

    plan = make_plan(config_for(tmp_path, custom_model, trust=True))
    plan = dataclasses.replace(plan, model=dataclasses.replace(plan.model, trust_remote_code=False))
    with pytest.raises(UserError) as info:
        load_model(plan, dtype="float32", attn_implementation="sdpa")
    text = str(info.value)
    assert "model.trust_remote_code" in text and "run the Python files" in text and str(custom_model) in text, text


def test_a_custom_tokenizer_without_the_setting_is_a_user_error_at_load(tmp_path, custom_tokenizer):
    from runner.data.tokenizer import load_tokenizer

    plan = make_plan(config_for(tmp_path, TINY, tokenizer=custom_tokenizer))
    with pytest.raises(UserError) as info:
        load_tokenizer(plan)
    text = str(info.value)
    assert "model.trust_remote_code" in text and str(custom_tokenizer) in text, text


def test_lint_deep_reports_the_custom_tokenizer_without_a_traceback(tmp_path, custom_tokenizer):
    proc = run("-m", "runner", "lint", "--deep", config_for(tmp_path, TINY, tokenizer=custom_tokenizer), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "model.trust_remote_code" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_built_in_model_type_with_an_auto_map_needs_no_setting(tmp_path):
    """Hub repos keep auto_map after transformers adopted their architecture; transformers then loads
    its own class without running anything, and so may runner."""
    from runner.train.model import load_model

    model_dir = _with_config(save_tiny_model(tmp_path / "native"), auto_map=AUTO_MAP)
    plan = make_plan(config_for(tmp_path, model_dir))
    assert type(load_model(plan, dtype="float32", attn_implementation="sdpa")).__name__ == "LlamaForCausalLM"


def test_an_unknown_model_type_without_code_says_the_setting_would_not_help(tmp_path):
    model_dir = _with_config(save_tiny_model(tmp_path / "unknown"), model_type="surely_not_a_model_type")
    with pytest.raises(ConfigErrors) as info:
        make_plan(config_for(tmp_path, model_dir))
    text = str(info.value)
    assert "surely_not_a_model_type" in text and "would not help" in text and "upgrade transformers" in text, text


def test_native_model_types_match_the_installed_transformers():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from runner.plan.remote_code import native_model_types

    assert native_model_types() == frozenset(CONFIG_MAPPING_NAMES)
