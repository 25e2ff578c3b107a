"""Config fuzzing (issue 9): a few hundred malformed configs, generated deterministically (seeded RNG)
from the valid fixtures in tests/fixtures/configs, go through `runner lint` in-process. For each:

- no exception escapes and no traceback is printed;
- mutations invalid by construction (bad types, unknown keys, bad enums, tabs in block indentation,
  NUL bytes, invalid UTF-8, deep nesting, alias bombs, object-constructing tags, unset environment
  variables, `extends` outside the folder, empty or oversized files; issue 17: NaN, infinity and
  absurd magnitudes in number keys, secrets of the wrong type, YAML 1.1 booleans, Axolotl and
  LLaMA-Factory files, `extends` naming a FIFO, a directory or a device) exit 2; the others exit 0 or 2;
- every exit 2 prints a location: file:line, a key path, or (for whole-file problems) the file;
- a secret value never appears in the output;
- nothing is written (lint is read-only, the digest cache included) but the mutation's own file, and no
  tag or `${...}` value runs anything.

A few end-to-end CLI cases run in subprocesses, and `extends` confinement (`..`, symlinks,
RUNNER_EXTENDS_ROOT) is tested on its own."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from runner.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "configs"
SEED = 20261123
BASES = sorted(p.name for p in FIXTURES.glob("*.yaml") if p.name != "shared_data.yaml")  # that one points outside
PWNED = "runner_fuzz_pwned"
SECTIONS = ("model", "adapter", "quantization", "datasets", "eval_datasets", "val_size", "data", "template",
            "sequence", "special_tokens", "training", "distributed", "tracking", "output", "extends", "name", "version")
LOCATION = re.compile(
    r"mut_\d+\.yaml:\d+"                                          # file:line
    r"|(?:^|\s)(?:" + "|".join(SECTIONS) + r")(?:\.[\w-]+)*:"     # a key path
    r"|mut_\d+\.yaml: error: (?:the file is|not UTF-8 text \(byte \d+\))"  # whole-file problems, byte offset
    r"|mut_\d+\.yaml: error: malformed YAML: .*\n.*position \d+",  # PyYAML's reader: a character offset
    re.MULTILINE)
# Crashes already reported to the lead, recognised by where they happen; the case is xfailed (not
# passed) while they last, and passes on its own once fixed.
KNOWN_CRASHES: dict = {}  # none open now


@dataclass
class Case:
    op: str
    base: str
    content: bytes
    must_fail: bool
    absent: str | None = None  # a secret value: never in the output


# --- mutation operators ------------------------------------------------------------------------

def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def delete_line(rng, text):
    lines = _lines(text)
    del lines[rng.randrange(len(lines))]
    return "".join(lines), False


def duplicate_line(rng, text):
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i] if lines[i].endswith("\n") else lines[i] + "\n")
    return "".join(lines), False


def swap_lines(rng, text):
    lines = _lines(text)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines), False


def truncate(rng, text):
    return text[: rng.randrange(1, len(text))], False


def unicode_junk(rng, text):
    junk = rng.choice(["\u202e", "\u200b", "é\u0301", "😀", "\ufeff", "\u2028", "𝕞𝕠𝕕𝕖𝕝", "\U0010fffd", "ǅ", "\x7f"])
    i = rng.randrange(len(text))
    return text[:i] + junk + text[i:], False


def byte_flips(rng, data: bytes):
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out), False


def binary_junk(rng, data: bytes):
    junk = bytes([0xFF]) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))  # 0xFF: never UTF-8
    i = rng.randrange(len(data))
    return data[:i] + junk + data[i:], True


def nul_byte(rng, data: bytes):
    i = rng.randrange(len(data))
    return data[:i] + b"\x00" + data[i:], True


def tab_indent(rng, data: dict):
    text = yaml.safe_dump(data, default_flow_style=False, sort_keys=False)
    lines = _lines(text)
    indented = [i for i, line in enumerate(lines) if line.startswith("  ") and line.strip()]
    i = rng.choice(indented)
    lines[i] = "\t" + lines[i].lstrip(" ")
    return "".join(lines), True


BAD_TYPES = [
    (("training", "learning_rate"), ["fast", [1e-4], {"v": 1}, True]),
    (("training", "micro_batch_size"), [2.5, "two", [2], -3, 0]),
    (("training", "epochs"), [True, "three", -1]),
    (("adapter", "r"), ["sixteen", 0, 1.5]),
    (("sequence", "max_length"), ["long", 4, [128]]),
    (("model", "path"), [42, ["a"], {"x": 1}]),
    (("distributed", "num_processes"), [0, "two"]),
    (("distributed", "main_port"), [70000, -1, "http"]),
    (("output", "save_every"), [0, "often"]),
    (("name",), [["x"], {"a": 1}]),
    (("datasets",), ["data/alpaca_small.json", 5, {}]),
    (("eval_datasets",), ["data/alpaca_eval.json", ["path"], [3]]),
]
UNKNOWN = [("modle",), ("trainng",), ("training", "lerning_rate"), ("adapter", "rank"), ("model", "pth"),
           ("distributed", "fsdp", "wrap_clas"), ("sequence", "max_len"), ("output", "dirr"), ("data", "cahce_dir")]
BAD_ENUMS = [
    (("distributed", "backend"), ["fsdp2", "deepspeed3", "", "FSDP", "horovod"]),
    (("adapter", "kind"), ["qlora", "LoRA", "adapter"]),
    (("training", "stage"), ["sfty", "rlhf", "SFT"]),
    (("training", "lr_scheduler"), ["cosine_annealing", "linearr"]),
    (("training", "precision"), ["bf32", "half"]),
    (("template", "name"), ["chatml2", "lama3"]),
    (("quantization", "bits"), [3, 16, "4"]),
    (("output", "resume"), ["maybe", True]),
]
HUGE = [
    (("training", "micro_batch_size"), -10**30, True),
    (("adapter", "r"), -10**50, True),
    (("distributed", "main_port"), 10**20, True),
    (("training", "learning_rate"), -1e308, True),
    (("training", "max_steps"), 10**400, False),
    (("training", "micro_batch_size"), 10**40, False),
    (("training", "warmup_ratio"), 1e308, False),
    (("sequence", "max_length"), 2**63, False),
]


def _set(data: dict, path: tuple, value) -> dict:
    node = data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return data


def _dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def type_swap(rng, data):
    path, values = rng.choice(BAD_TYPES)
    return _dump(_set(data, path, rng.choice(values))), True


def unknown_key(rng, data):
    path = rng.choice(UNKNOWN)
    return _dump(_set(data, path, rng.choice([1, "x", True, None, [1]]))), True


def bad_enum(rng, data):
    path, values = rng.choice(BAD_ENUMS)
    if path[0] == "quantization":
        data.setdefault("adapter", {"kind": "lora"})
    return _dump(_set(data, path, rng.choice(values))), True


def huge_number(rng, data):
    path, value, invalid = rng.choice(HUGE)
    return _dump(_set(data, path, value)), invalid


def deep_nesting(rng, data):
    depth = rng.choice([65, 200, 5000, 50000])
    opener, closer = rng.choice([("[", "]"), ("{a: ", "}")])
    return _dump(data) + "version_junk: " + opener * depth + "1" + closer * depth + "\n", True


def alias_bomb(rng, data):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return _dump(data) + "bomb:\n" + "".join(f"  {line}\n" for line in lines), True


def benign_alias(rng, data):
    """The training set anchored and reused as the eval set: legal YAML, a fine config."""
    first = yaml.safe_dump(data.pop("datasets")[0], default_flow_style=True, width=10_000).strip()
    data.pop("eval_datasets", None)
    return _dump(data) + f"datasets:\n- &ds {first}\neval_datasets:\n- *ds\n", False


def object_tag(rng, data, tmp: Path):
    target = tmp / PWNED
    tag = rng.choice([
        f"!!python/object/apply:os.system ['touch {target}']",
        "!!python/name:os.system",
        f"!!python/object/new:subprocess.Popen [['touch', '{target}']]",
        f"!!python/object/apply:builtins.exec [\"open('{target}', 'w')\"]",
        "!!python/module:os",
    ])
    return _dump(data) .replace("model:", f"name: {tag}\nmodel:", 1), True


def other_tag(rng, data):
    tag = rng.choice(["!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2020-01-01", "!custom 5", "!!str 3e-4",
                      "!!float 3", "!!omap [a: 1]", "!<tag:example.com:x> y", "!!int '7'"])
    path = rng.choice([("name",), ("training", "learning_rate"), ("tracking", "log_every")])
    text = _dump(_set(data, path, "PLACEHOLDER"))
    return text.replace("PLACEHOLDER", tag, 1), False


def env_value(rng, data, tmp: Path):
    value, invalid = rng.choice([
        ("${env:RUNNER_FUZZ_SURELY_UNSET_VARIABLE}", True),
        (f"$(touch {tmp / PWNED})", False),
        (f"`touch {tmp / PWNED}`", False),
        ("${env:RUNNER_FUZZ_SURELY_UNSET_VARIABLE:-$(id)}", False),
        ("${env:HOME}${env:HOME}", False),
    ])
    return _dump(_set(data, ("name",), value)), invalid


def extends_outside(rng, data):
    target = rng.choice(["../../../../../../etc/hostname", "/etc/hostname", "../" * 12 + "etc/passwd", "~/.bashrc"])
    data.pop("extends", None)
    return "extends: " + target + "\n" + _dump(data), True


def whole_file(rng, data, index: int):
    options = [(b"", True), (b"# nothing but a comment\n", True), (b"---\n...\n", True), (b"[]\n", True),
               (b"just a string\n", True), ((_dump(data) + "#" * (1 << 20)).encode(), True)]
    return options[index % len(options)]


# --- config input limits, secrets, other tools' configs (issue 17) ------------------------------

NUMBER_KEYS = [("training", "learning_rate"), ("training", "epochs"), ("val_size",), ("adapter", "dropout"),
               ("adapter", "alpha"), ("training", "weight_decay"), ("training", "adam_beta1"), ("training", "max_grad_norm"),
               ("training", "dpo", "beta"), ("training", "kto", "undesirable_weight"), ("training", "warmup_ratio")]
BOUNDED_INTEGERS = [("adapter", "r"), ("training", "seed"), ("training", "max_steps"), ("sequence", "max_length"),
                    ("training", "gradient_accumulation"), ("tracking", "log_every"), ("output", "save_total_limit")]
SECRET = "hf_FuZzSeCrEtVaLuE9876"
BOOLEAN_KEYS = [("sequence", "packing"), ("data", "shuffle"), ("adapter", "dora"), ("training", "torch_compile"),
                ("model", "trust_remote_code"), ("output", "merge")]


def non_finite(rng, data):
    """NaN or infinity in a number key (or a decimal literal beyond the float range)."""
    path = rng.choice(NUMBER_KEYS)
    literal = rng.choice([".nan", ".NaN", ".inf", "-.inf", "+.inf", "1e999", "-1e400"])
    return _dump(_set(data, path, "PLACEHOLDER")).replace("PLACEHOLDER", literal, 1), True


def absurd_number(rng, data):
    """A finite magnitude no run means: beyond the key's schema range."""
    if rng.random() < 0.5:
        path, value = rng.choice(NUMBER_KEYS), rng.choice([1e308, 1.7e308, 1e30])
    else:
        path, value = rng.choice(BOUNDED_INTEGERS), rng.choice([10**30, 2**64, 10**400])
    return _dump(_set(data, path, value)), True


def secret_wrong_type(rng, data):
    path = rng.choice([("model", "token"), ("tracking", "wandb", "api_key")])
    if path[0] == "tracking":
        data["tracking"] = {"wandb": {"project": "p"}}
    value = rng.choice([[SECRET], {"value": SECRET}, [1, SECRET], {SECRET: 1}])
    return _dump(_set(data, path, value)), True


def yaml11_boolean(rng, data):
    path = rng.choice(BOOLEAN_KEYS)
    word = rng.choice(["yes", "no", "on", "off", "y", "n", "Yes", "OFF"])
    return _dump(_set(data, path, "PLACEHOLDER")).replace("PLACEHOLDER", word, 1), True


def foreign_config(rng, data):
    """The same run written as another tool writes it."""
    model = data["model"]["path"]
    ds = data["datasets"][0]["path"]
    if rng.random() < 0.5:
        out = {"base_model": model, "datasets": [{"path": ds, "type": "alpaca"}], "sequence_len": 512,
               "micro_batch_size": 2, "num_epochs": 1, "learning_rate": 2e-4, "adapter": "lora", "lora_r": 8}
    else:
        out = {"model_name_or_path": model, "stage": "sft", "finetuning_type": "lora", "dataset": "alpaca_en_demo",
               "template": "llama3", "cutoff_len": 512, "num_train_epochs": 1.0, "per_device_train_batch_size": 2}
    keys = list(out)
    rng.shuffle(keys)
    return _dump({k: out[k] for k in keys}), True


def special_extends(rng, data):
    """extends naming a FIFO (made in the arena), a directory or a device: refused, never read."""
    target = rng.choice(["pipe.yaml", "data", "/dev/zero", "/dev/null"])
    data.pop("extends", None)
    return "extends: " + target + "\n" + _dump(data), True


ISSUE17_OPS = [(non_finite, 24), (absurd_number, 16), (secret_wrong_type, 10), (yaml11_boolean, 10),
               (foreign_config, 8), (special_extends, 8)]

TEXT_OPS = [(delete_line, 20), (duplicate_line, 20), (swap_lines, 20), (truncate, 20), (unicode_junk, 15)]
BYTE_OPS = [(byte_flips, 25), (binary_junk, 15), (nul_byte, 15)]
DATA_OPS = [(tab_indent, 15), (type_swap, 45), (unknown_key, 35), (bad_enum, 35), (huge_number, 16),
            (deep_nesting, 6), (alias_bomb, 4), (benign_alias, 4), (other_tag, 10), (extends_outside, 6)]
TMP_OPS = [(object_tag, 10), (env_value, 10)]


def generate(tmp: Path) -> list[Case]:
    """Every case, the same ones on every run (seeded)."""
    rng = random.Random(SEED)
    texts = {b: (FIXTURES / b).read_text() for b in BASES}
    cases = []

    def base():
        name = rng.choice(BASES)
        return name, texts[name]

    for op, n in TEXT_OPS:
        for _ in range(n):
            name, text = base()
            out, bad = op(rng, text)
            cases.append(Case(op.__name__, name, out.encode("utf-8", "surrogatepass"), bad))
    for op, n in BYTE_OPS:
        for _ in range(n):
            name, text = base()
            out, bad = op(rng, text.encode())
            cases.append(Case(op.__name__, name, out, bad))
    for op, n in DATA_OPS:
        for _ in range(n):
            name, text = base()
            out, bad = op(rng, yaml.safe_load(text))
            cases.append(Case(op.__name__, name, out.encode(), bad))
    for op, n in TMP_OPS:
        for _ in range(n):
            name, text = base()
            out, bad = op(rng, yaml.safe_load(text), tmp)
            cases.append(Case(op.__name__, name, out.encode(), bad))
    for i in range(6):
        name, text = base()
        out, bad = whole_file(rng, yaml.safe_load(text), i)
        cases.append(Case("whole_file", name, out, bad))
    for op, n in ISSUE17_OPS:  # after the others, so that their cases stay as they were
        for _ in range(n):
            name, text = base()
            out, bad = op(rng, yaml.safe_load(text))
            cases.append(Case(op.__name__, name, out.encode(), bad, SECRET if op is secret_wrong_type else None))
    return cases


# --- the harness -------------------------------------------------------------------------------

def _known_crash(err: BaseException) -> str | None:
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    if frames and isinstance(err, TypeError):
        last = frames[-1]
        return KNOWN_CRASHES.get((Path(last.filename).name, last.name))
    return None


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """A copy of the fixtures (relative model/data paths resolve inside it) and a working folder
    (where relative cache dirs land); the process works from the latter."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(FIXTURES, root / "fx")
    (root / "cwd").mkdir()
    os.mkfifo(root / "fx" / "pipe.yaml")  # for special_extends: reading it would block forever
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root / "cwd")
        mp.delenv("RUNNER_EXTENDS_ROOT", raising=False)
        mp.delenv("RUNNER_FUZZ_SURELY_UNSET_VARIABLE", raising=False)
        yield root


FIXTURES_BEFORE = tree(FIXTURES)
CASES = generate(Path("/nonexistent-fuzz-target"))  # for the count and ids; rebuilt per arena below


def test_enough_cases_and_deterministic():
    assert len(CASES) >= 200
    again = generate(Path("/nonexistent-fuzz-target"))
    assert [c.content for c in again] == [c.content for c in CASES]
    assert sum(c.must_fail for c in CASES) >= 200, "at least 200 are invalid by construction"


@pytest.fixture(scope="module")
def cases(arena) -> list[Case]:
    return generate(arena)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{i:03d}-{c.op}-{c.base}" for i, c in enumerate(CASES)])
def test_malformed_config(index, cases, arena, capsys):
    case = cases[index]
    path = arena / "fx" / f"mut_{index:03d}.yaml"
    path.write_bytes(case.content)
    before = tree(arena)
    capsys.readouterr()
    try:
        code = main(["lint", str(path)])
    except BaseException as err:  # noqa: BLE001 - the point: nothing may escape
        known = _known_crash(err)
        if known:
            pytest.xfail(f"known crash: {known}")
        pytest.fail(f"{case.op} on {case.base}: {type(err).__name__}: {err}")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    if case.must_fail:
        assert code == 2, f"{case.op} on {case.base} was accepted:\n{case.content[:400]!r}\n{text}"
    else:
        assert code in (0, 2), text
    if code == 2:
        assert LOCATION.search(out.err), f"no location in:\n{out.err}"
    if case.absent:
        assert case.absent not in text, f"a secret value was printed:\n{text}"
    new = {k: v for k, v in tree(arena).items() if before.get(k) != v}
    assert not new, f"lint wrote files: {sorted(new)}"
    assert not (arena / PWNED).exists(), "a tag or an environment value ran a command"


def test_fixtures_untouched_by_fuzzing():
    """The originals the mutations came from are unchanged (mutations are written to a copy)."""
    assert tree(FIXTURES) == FIXTURES_BEFORE


@pytest.mark.parametrize("tail", ["eval_datasets:\n", "eval_datasets: data/alpaca_eval.json\n", "eval_datasets: [path]\n"])
def test_path_sections_of_the_wrong_shape_are_errors(arena, capsys, tail):
    path = arena / "fx" / "shape.yaml"
    path.write_text("model: {path: tiny-model}\ndatasets: [{path: data/alpaca_small.json}]\n" + tail)
    assert main(["lint", str(path)]) == 2
    assert "eval_datasets" in capsys.readouterr().err


# --- end to end, in subprocesses -----------------------------------------------------------------

E2E = [
    ("tab", b"model:\n\tpath: tiny-model\n", "mut_tab.yaml:2"),
    ("bomb", b'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
             b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
             b"e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", "mut_bomb.yaml:"),
    ("tag", b"name: !!python/object/apply:os.system ['touch PWNED_E2E']\nmodel: {path: tiny-model}\n"
            b"datasets: [{path: data/alpaca_small.json}]\n", "mut_tag.yaml:1"),
    ("binary", b"model: {path: tiny-model}\n\xff\xfe\x00junk\n", "not UTF-8"),
]


@pytest.mark.parametrize("label,content,expected", E2E, ids=[e[0] for e in E2E])
def test_cli_end_to_end(tmp_path, label, content, expected):
    shutil.copytree(FIXTURES, tmp_path / "fx")
    path = tmp_path / "fx" / f"mut_{label}.yaml"
    path.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "runner", "lint", str(path)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not list(tmp_path.rglob("PWNED_E2E"))


# --- extends confinement -------------------------------------------------------------------------

def _base_outside(tmp_path) -> tuple[Path, Path]:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "base.yaml").write_text("training: {epochs: 3}\n")
    project = tmp_path / "project"
    shutil.copytree(FIXTURES, project)
    return outside, project


def _cfg(project: Path, extends: str) -> Path:
    path = project / "top.yaml"
    path.write_text(f"extends: {extends}\nmodel: {{path: tiny-model}}\ndatasets: [{{path: data/alpaca_small.json}}]\n")
    return path


@pytest.mark.parametrize("how", ["dotdot", "symlink", "absolute"])
def test_extends_outside_the_config_folder_is_refused(tmp_path, capsys, monkeypatch, how):
    monkeypatch.delenv("RUNNER_EXTENDS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    outside, project = _base_outside(tmp_path)
    if how == "symlink":
        (project / "linked.yaml").symlink_to(outside / "base.yaml")
        target = "linked.yaml"
    else:
        target = "../elsewhere/base.yaml" if how == "dotdot" else str(outside / "base.yaml")
    path = _cfg(project, target)
    capsys.readouterr()
    assert main(["lint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "top.yaml:1" in err and "outside" in err and "RUNNER_EXTENDS_ROOT" in err, err
    assert str(outside / "base.yaml") in err, "the message names where the base really is"


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_runner_extends_root_allows_a_wider_folder(tmp_path, capsys, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    outside, project = _base_outside(tmp_path)
    if how == "symlink":
        (project / "linked.yaml").symlink_to(outside / "base.yaml")
    path = _cfg(project, "linked.yaml" if how == "symlink" else "../elsewhere/base.yaml")
    monkeypatch.setenv("RUNNER_EXTENDS_ROOT", str(tmp_path))
    capsys.readouterr()
    assert main(["lint", str(path)]) == 0, capsys.readouterr().err
    from runner.plan.resolve import make_plan

    assert make_plan(path).training.epochs == 3, "the base was read"
    monkeypatch.setenv("RUNNER_EXTENDS_ROOT", str(project))  # a root that does not hold it
    assert main(["lint", str(path)]) == 2


def test_a_config_cannot_widen_its_own_root(tmp_path, capsys, monkeypatch):
    """Bases are confined to the top-level file's folder even when a base in a subfolder extends
    upwards, and a chain through a symlinked folder is judged by the real path."""
    monkeypatch.delenv("RUNNER_EXTENDS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    outside, project = _base_outside(tmp_path)
    (project / "sub").mkdir()
    (project / "sub" / "mid.yaml").write_text("extends: ../../elsewhere/base.yaml\n")
    path = _cfg(project, "sub/mid.yaml")
    capsys.readouterr()
    assert main(["lint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "mid.yaml:1" in err and "outside" in err, err
    (project / "linkdir").symlink_to(outside, target_is_directory=True)
    path = _cfg(project, "linkdir/base.yaml")
    assert main(["lint", str(path)]) == 2
    assert "outside" in capsys.readouterr().err
