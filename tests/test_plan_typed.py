"""The typed Plan: every schema key reaches code as an attribute of a frozen section, with the
schema's default and nothing else (no default is repeated in code), and plan.json reads back into
the same Plan."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config.schema import load_schema
from runner.plan.plan import Plan
from runner.plan.resolve import make_plan

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"

# Where a config key lives in the Plan (section attribute path), where it is not the same path.
MOVED = {"datasets": ("data", "datasets"), "eval_datasets": ("data", "eval_datasets"), "val_size": ("data", "val_size"),
         "template": ("data", "template"), "sequence": ("data", "sequence"),
         "special_tokens": ("data", "special_tokens"), "vision": ("data", "vision")}
# Keys the resolver derives from their config value (their schema default is checked through the rule).
DERIVED = {("adapter", "alpha"), ("output", "dir"), ("name",), ("model", "path"), ("data", "cache_dir")}
NOT_IN_PLAN = {("version",), ("extends",), ("model", "token"), ("tracking", "wandb"), ("tracking", "mlflow"),
               ("tracking", "swanlab"),
               ("training", "early_stopping"), ("model", "rope_scaling")}  # secret / meta / null section


def schema_keys(node=None, prefix=()):
    """(key path, schema node) of every key with a default, datasets' items as index 0."""
    node = node or load_schema()
    obj = node if "properties" in node else next((b for b in node.get("oneOf", []) + node.get("anyOf", [])
                                                  if "properties" in b), None)
    out = []
    for key, sub in (obj or {}).get("properties", {}).items():
        path = prefix + (key,)
        if "default" in sub:
            out.append((path, sub))
        out += schema_keys(sub, path)
        if sub.get("type") == "array" and isinstance(sub.get("items"), dict):
            out += schema_keys(sub["items"], path + (0,))
    return out


def plan_value(plan, path):
    head = MOVED.get(path[0])
    parts = (head + path[1:]) if head else path
    value = plan
    for part in parts:
        value = value[part] if isinstance(part, int) else getattr(value, part)
    return value


def as_json(value):
    """Plan values in the schema's terms (tuples are lists, floats that are whole compare as ints)."""
    from runner.plan.sections import to_dict

    return json.loads(json.dumps(to_dict(value)))


@pytest.fixture(scope="module")
def minimal_plan():
    return make_plan(CONFIGS / "minimal.yaml")


def test_every_schema_default_is_what_the_plan_holds(minimal_plan):
    checked = 0
    for path, node in schema_keys():
        if path in NOT_IN_PLAN or path[:2] in NOT_IN_PLAN or path in DERIVED or path[0] == "eval_datasets":
            continue
        if path[0] == "datasets" and len(path) > 2 and path[2] in ("path",):
            continue
        if path[0] != "datasets" and 0 in path:  # an item of a list that is empty by default
            continue
        value = plan_value(minimal_plan, path)
        assert as_json(value) == node["default"], f"{'.'.join(map(str, path))}: schema default {node['default']!r}, plan {value!r}"
        checked += 1
    assert checked > 100  # the whole schema, not a corner of it


def test_derived_defaults_follow_their_rule(minimal_plan):
    assert minimal_plan.adapter.alpha == 2 * minimal_plan.adapter.r
    assert minimal_plan.output.dir == str((Path.cwd() / "outputs" / minimal_plan.name).resolve())
    assert Path(minimal_plan.data.cache_dir).is_absolute()


def test_every_schema_key_has_a_field():
    from runner.plan import sections

    def fields(cls):
        return {f.name for f in dataclasses.fields(cls)}

    section_of = {"model": sections.Model, "adapter": sections.Adapter, "quantization": sections.Quantization,
                  "training": sections.Training, "distributed": sections.Distributed, "tracking": sections.Tracking,
                  "output": sections.Output, "template": sections.Template, "sequence": sections.Sequence,
                  "special_tokens": sections.SpecialTokens, "datasets": sections.Dataset,
                  "evaluation": sections.Evaluation, "vision": sections.Vision}
    nested = {("training", "dpo"): sections.DPO, ("training", "kto"): sections.KTO, ("training", "orpo"): sections.ORPO,
              ("training", "grpo"): sections.GRPO,
              ("training", "rm"): sections.RM, ("training", "simpo"): sections.SimPO, ("training", "cpo"): sections.CPO,
              ("distributed", "fsdp"): sections.FSDP, ("distributed", "deepspeed"): sections.DeepSpeed,
              ("tracking", "wandb"): sections.WandB, ("training", "early_stopping"): sections.EarlyStopping}
    schema = load_schema()["properties"]
    missing = []
    for name, cls in section_of.items():
        node = schema[name]["items"] if name == "datasets" else schema[name]
        missing += [f"{name}.{k}" for k in node["properties"] if k not in fields(cls) and (name, k) != ("model", "token")]
    for (section, key), cls in nested.items():
        node = schema[section]["properties"][key]
        node = next((b for b in node.get("oneOf", []) + node.get("anyOf", []) if "properties" in b), node)
        missing += [f"{section}.{key}.{k}" for k in node["properties"] if k not in fields(cls)]
    assert not missing, f"schema keys without a Plan field: {missing}"


def test_sections_are_frozen(minimal_plan):
    with pytest.raises(dataclasses.FrozenInstanceError):
        minimal_plan.training.learning_rate = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        minimal_plan.data.sequence.max_length = 1


@pytest.mark.parametrize("config", ["lora.yaml", "dpo.yaml", "fsdp.yaml", "wandb.yaml", "qlora.yaml", "freeze.yaml"])
def test_plan_json_reads_back_into_the_same_plan(config):
    plan = make_plan(CONFIGS / config)
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again == plan
    assert again.to_dict() == plan.to_dict()


def test_plan_json_with_an_unknown_field_is_refused():
    data = json.loads(make_plan(CONFIGS / "lora.yaml").to_json())
    data["training"]["learnig_rate"] = 1.0
    with pytest.raises(TypeError, match="learnig_rate"):
        Plan.from_dict(data)


SCHEMA_KEYS = {k for path, _ in schema_keys() for k in path if isinstance(k, str)}


def test_no_config_key_is_read_with_an_inline_default():
    """`.get("learning_rate", ...)` on a section would repeat a default the schema owns."""
    found = subprocess.run(["git", "grep", "-n", r'\.get("', "--", "runner/train", "runner/plan"], cwd=REPO,
                           capture_output=True, text=True).stdout.splitlines()
    # Receivers that are not the resolved config: metrics rows and Trainer logs, files other tools
    # wrote, and the config as written (raw), where a key's absence is what is asked.
    not_config = {"r", "row", "logs", "raw", "raw_dist", "raw_adapter", "zero", "stored", "launch", "peft_config"}
    reads = [line for line in found for receiver, key in re.findall(r'(\w+)\.get\("([A-Za-z_]+)"', line)
             if key in SCHEMA_KEYS and receiver not in not_config]
    assert not reads, "\n".join(reads)


def test_config_and_plan_packages_import_no_ml_library():
    import pkgutil

    import runner.config
    import runner.plan

    modules = [f"runner.config.{m.name}" for m in pkgutil.iter_modules(runner.config.__path__)]
    modules += [f"runner.plan.{m.name}" for m in pkgutil.iter_modules(runner.plan.__path__)]
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'accelerate') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    assert len(modules) >= 10


def test_an_earlier_runners_plan_json_reads_with_later_settings_off():
    """A run trained before a setting existed stays usable (generate, export, serve): the missing
    optional settings read as None and flags as False; anything else missing is still refused."""
    data = json.loads(make_plan(CONFIGS / "lora.yaml").to_json())
    del data["training"]["early_stopping"], data["output"]["keep_best"], data["training"]["evals_per_epoch"]
    with pytest.raises(TypeError, match="misses"):
        Plan.from_dict(data)
    earlier = Plan.from_dict(data, earlier=True)
    assert earlier.training.early_stopping is None and earlier.output.keep_best is False
    assert earlier.training.evals_per_epoch is None
    del data["training"]["learning_rate"]
    with pytest.raises(TypeError, match="learning_rate"):
        Plan.from_dict(data, earlier=True)
