"""Data at scale: max_samples (a cap, never repeated), hub subsets and revisions from a local
dataset repository (the Hugging Face cache layout, no network), data.streaming (the same rows as
the whole pipeline, bounded memory), data.num_proc (byte-identical to one process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_data_support import tiny_model_dir

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


def alpaca_jsonl(path: Path, n: int) -> Path:
    rows = json.loads((SHARED / "alpaca_en_demo.json").read_text())[:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, datasets: list, name="cfg.yaml", **sections) -> Path:
    cfg = {"model": {"path": str(tiny_model_dir(tmp_path))}, "datasets": datasets,
           "template": {"name": "chatml"}, "sequence": {"max_length": 256, "packing": True},
           "data": {"cache_dir": str(tmp_path / "cache")}, "training": {"max_steps": 4},
           "output": {"dir": str(tmp_path / "run")}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def plan_of(path: Path, overrides=()):
    from runner.plan.resolve import make_plan

    return make_plan(path, list(overrides))


def rows_of(dataset) -> list[dict]:
    return [dict(r) for r in dataset]


# ---- max_samples ---------------------------------------------------------------------------------
def test_max_samples_caps_at_the_first_rows_and_never_repeats(tmp_path):
    from runner.data.build import _load_items
    from runner.plan.sections import to_dict

    data = alpaca_jsonl(tmp_path / "a.jsonl", 30)
    plan = plan_of(config(tmp_path, [{"path": str(data), "max_samples": 10}]))
    items, stats = _load_items(to_dict(plan.data)["datasets"], to_dict(plan.data), mix=False)
    assert [i.origin for i in items] == [f"{data}:{n}" for n in range(1, 11)]
    assert stats[0]["rows_read"] == 10
    over = plan_of(config(tmp_path, [{"path": str(data), "max_samples": 500}], name="over.yaml"))
    items = _load_items(to_dict(over.data)["datasets"], to_dict(over.data), mix=False)[0]
    assert len(items) == 30 and len({i.origin for i in items}) == 30  # the cap never repeats a row
    # num_samples is another thing: it samples, and repeats a small file
    both = plan_of(config(tmp_path, [{"path": str(data), "max_samples": 5, "num_samples": 12}], name="both.yaml"))
    items = _load_items(to_dict(both.data)["datasets"], to_dict(both.data), mix=False)[0]
    assert len(items) == 12 and {i.origin for i in items} == {f"{data}:{n}" for n in range(1, 6)}
    assert over.hashes.data != plan.hashes.data


def test_llamafactory_max_samples_becomes_the_cap(tmp_path):
    (tmp_path / "data").mkdir()
    alpaca_jsonl(tmp_path / "data" / "mine.jsonl", 5)
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(
        {"mine": {"file_name": "mine.jsonl"}, "hubbed": {"hf_hub_url": "acme/chat", "subset": "fr", "split": "test"}}))
    lf = tmp_path / "lf.yaml"
    lf.write_text(yaml.safe_dump({"model_name_or_path": "org/model", "stage": "sft", "finetuning_type": "lora",
                                  "dataset": "mine,hubbed", "dataset_dir": str(tmp_path / "data"), "template": "qwen",
                                  "max_samples": 3, "output_dir": "out"}))
    out = tmp_path / "runner.yaml"
    done = subprocess.run([sys.executable, "-m", "runner", "import", "llamafactory", str(lf), "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load(out.read_text())
    assert [d.get("max_samples") for d in cfg["datasets"]] == [3, 3]
    assert "num_samples" not in cfg["datasets"][0]
    assert (cfg["datasets"][1]["subset"], cfg["datasets"][1]["split"]) == ("fr", "test")


# ---- hub datasets: subset, split, revision --------------------------------------------------------
COMMIT_V1, COMMIT_V2 = "1" * 40, "2" * 40
README = """---
configs:
- config_name: en
  data_files:
  - {split: train, path: en/train.jsonl}
  - {split: test, path: en/test.jsonl}
- config_name: fr
  data_files:
  - {split: train, path: fr/train.jsonl}
---
A dataset repository as the hub serves it.
"""


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """acme/chat in a Hugging Face cache: main at COMMIT_V2, tag v1 at COMMIT_V1."""
    repo = tmp_path / "hub" / "datasets--acme--chat"
    for commit, word in ((COMMIT_V1, "one"), (COMMIT_V2, "two")):
        snap = repo / "snapshots" / commit
        for sub, split, n in (("en", "train", 6), ("en", "test", 2), ("fr", "train", 4)):
            (snap / sub).mkdir(parents=True, exist_ok=True)
            (snap / sub / f"{split}.jsonl").write_text("".join(
                json.dumps({"instruction": f"{sub} {split} {i} {word}", "output": f"answer {i}"}) + "\n" for i in range(n)))
        (snap / "README.md").write_text(README)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT_V2)
    (repo / "refs" / "v1").write_text(COMMIT_V1)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo


def test_hub_subset_split_and_revision_from_the_local_cache(tmp_path, hub_cache):
    from runner.data import build_datasets
    from runner.data.build import _load_items
    from runner.plan.sections import to_dict

    def read(**ds):
        plan = plan_of(config(tmp_path, [{"path": "acme/chat", "format": "alpaca", **ds}], name="h.yaml"))
        items = _load_items(to_dict(plan.data)["datasets"], to_dict(plan.data), mix=False)[0]
        return plan, [i.row["messages"][0]["content"] for i in items]

    plan_fr, fr = read(subset="fr")
    assert fr == [f"fr train {i} two" for i in range(4)]
    _, test = read(subset="en", split="test")
    assert test == ["en test 0 two", "en test 1 two"]
    plan_v1, v1 = read(subset="fr", revision="v1")
    assert v1 == [f"fr train {i} one" for i in range(4)]
    plan_pinned, _ = read(subset="fr", revision=COMMIT_V1)
    # hashed by the commit the revision names: a tag and its commit agree, main differs
    assert plan_fr.hashes.data and plan_v1.hashes.data
    assert plan_v1.hashes.data == plan_pinned.hashes.data != plan_fr.hashes.data
    assert not plan_fr.hashes.unresolved
    # resolved, so cached like a local file
    prepared = build_datasets(plan_fr, progress=False)
    assert prepared.stats["cache"] == "built" and len(prepared.train) >= 1


def test_hub_subset_that_is_not_there_names_the_subsets(tmp_path, hub_cache):
    from runner.data import build_datasets
    from runner.errors import UserError

    plan = plan_of(config(tmp_path, [{"path": "acme/chat", "format": "alpaca", "subset": "de"}]))
    with pytest.raises(UserError) as e:
        build_datasets(plan, progress=False)
    assert "subset 'de'" in str(e.value) and "en, fr" in e.value.hint


def test_hub_dataset_not_cached_offline_is_unresolved_and_refused(tmp_path, hub_cache):
    from runner.data import build_datasets
    from runner.errors import UserError

    plan = plan_of(config(tmp_path, [{"path": "acme/other", "format": "alpaca", "revision": "v3"}]))
    assert plan.hashes.data is None and any("acme/other" in u for u in plan.hashes.unresolved)
    with pytest.raises(UserError) as e:
        build_datasets(plan, progress=False)
    assert "HF_HUB_OFFLINE" in str(e.value) and "--revision v3" in e.value.hint


def test_local_repository_folder_with_a_subset(tmp_path, hub_cache):
    from runner.data.build import _load_items
    from runner.plan.sections import to_dict

    folder = hub_cache / "snapshots" / COMMIT_V1
    plan = plan_of(config(tmp_path, [{"path": str(folder), "format": "alpaca", "subset": "en", "split": "test"}]))
    items = _load_items(to_dict(plan.data)["datasets"], to_dict(plan.data), mix=False)[0]
    assert [i.row["messages"][0]["content"] for i in items] == ["en test 0 one", "en test 1 one"]


# ---- streaming -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [False, True])
def test_streamed_rows_equal_the_whole_pipeline_on_a_small_file(tmp_path, shuffle):
    from runner.data import build_datasets

    data = alpaca_jsonl(tmp_path / "a.jsonl", 120)
    ds = [{"path": str(data), "format": "alpaca"}]
    whole = plan_of(config(tmp_path, ds, data={"shuffle": shuffle}))
    streamed = plan_of(config(tmp_path, ds, name="s.yaml", data={"shuffle": shuffle, "streaming": True}))
    expected = rows_of(build_datasets(whole, progress=False).train)
    prepared = build_datasets(streamed, progress=False)
    assert prepared.stats["cache"].startswith("off")
    assert list(prepared.train) == expected  # packed rows: ids, labels and positions, in order
    assert "position_ids" in expected[0] and len(expected) < 120  # really packed
    assert list(prepared.train) == expected  # a second pass reads the file again, the same
    assert streamed.hashes.data and streamed.hashes.data != whole.hashes.data


def test_streaming_in_buffers_keeps_every_sample(tmp_path):
    """Buffers smaller than the file: packed per buffer, each sample exactly once."""
    from runner.data import build_datasets

    data = alpaca_jsonl(tmp_path / "a.jsonl", 90)
    ds = [{"path": str(data), "format": "alpaca"}]
    whole = plan_of(config(tmp_path, ds, sequence={"packing": False}, data={"shuffle": False}))
    streamed = plan_of(config(tmp_path, ds, name="s.yaml", sequence={"packing": False},
                              data={"shuffle": True, "streaming": True, "stream_buffer": 25}))
    key = lambda r: (tuple(r["input_ids"]), tuple(r["labels"]))  # noqa: E731
    got = sorted(map(key, build_datasets(streamed, progress=False).train))
    assert got == sorted(map(key, rows_of(build_datasets(whole, progress=False).train)))


def test_streaming_refusals_at_plan_time(tmp_path):
    from runner.errors import ConfigErrors

    data = alpaca_jsonl(tmp_path / "a.jsonl", 5)
    cases = [({"training": {"max_steps": None}}, "training.max_steps"),
             ({"val_size": 0.1}, "val_size"),
             ({"datasets": [{"path": str(data), "num_samples": 3}]}, "max_samples"),
             ({"training": {"stage": "dpo", "max_steps": 2}}, "stage dpo")]
    for extra, needle in cases:
        extra = dict(extra)
        datasets = extra.pop("datasets", [{"path": str(data)}])
        with pytest.raises(ConfigErrors) as e:
            plan_of(config(tmp_path, datasets, data={"streaming": True}, **extra))
        assert needle in str(e.value), (extra, str(e.value))


def test_streaming_a_large_file_holds_one_buffer(tmp_path):
    """A 40 MB file streamed in a child process: its peak memory stays flat over 15 buffers, and
    all it ever grew is less than the file."""
    big = tmp_path / "big.jsonl"
    row = json.dumps({"instruction": "Summarize the text. " + "word " * 60, "output": "A summary. " * 10}) + "\n"
    with open(big, "w") as f:
        f.write(row * (40 * 2**20 // len(row)))
    cfg = config(tmp_path, [{"path": str(big), "format": "alpaca"}], data={"streaming": True, "stream_buffer": 200},
                 sequence={"max_length": 2048})
    script = f"""
import json, time, resource
def hwm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024
from runner.plan.resolve import make_plan
from runner.data import build_datasets
plan = make_plan({str(cfg)!r})
import torch, transformers  # loaded before the baseline: training has them
start = time.time(); base = hwm()
prepared = build_datasets(plan, progress=False)
rows = 0
for r in prepared.train:
    rows += 1
    if rows == 1:
        first, first_s = hwm(), time.time() - start
    if rows == 3000: break
print(json.dumps({{"setup_mb": first - base, "then_grew_mb": hwm() - first, "first_row_s": first_s, "rows": rows}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["rows"] == 3000  # about 15 buffers
    assert found["then_grew_mb"] < 8, found  # flat while reading on
    assert found["setup_mb"] < 40, found  # the file is 40 MB; its rows in memory would be several times that


# ---- num_proc ------------------------------------------------------------------------------------
def test_num_proc_output_is_byte_identical_to_one_process(tmp_path):
    from runner.data import build_datasets
    from runner.data import parallel
    from runner.data.parallel import MIN_ROWS_PER_PROCESS

    data = tmp_path / "a.json"
    data.write_text((SHARED / "alpaca_en_demo.json").read_text())
    n = len(json.loads(data.read_text()))
    assert n >= 4 * MIN_ROWS_PER_PROCESS
    entries = {}
    for procs in (1, 2):
        plan = plan_of(config(tmp_path, [{"path": str(data), "format": "alpaca"}], name=f"p{procs}.yaml",
                              sequence={"max_length": 64, "truncation": "truncate"}, val_size=0.05,
                              data={"num_proc": procs, "cache_dir": str(tmp_path / f"cache{procs}")}))
        forked = parallel.SHARES_FORKED
        prepared = build_datasets(plan, progress=False)
        assert prepared.stats["cache"] == "built"
        assert parallel.SHARES_FORKED - forked == (0 if procs == 1 else 2)  # the training rows in two shares (eval is small)
        entries[procs] = (plan.hashes, Path(prepared.stats["cache_dir"]))
    assert entries[1][0] == entries[2][0]  # num_proc joins no hash
    one, two = entries[1][1], entries[2][1]
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert any(f.suffix == ".arrow" for f in files)
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f


def test_streaming_trains_a_tiny_model_end_to_end(tmp_path):
    """`runner train` on a stream: the steps max_steps asks for, each logged with a finite loss,
    across more than one pass over a small file (set_epoch reshuffles)."""
    import math

    from tiny_model import save_tiny_model, write_config
    from tiny_tokenizer import save_tiny_tokenizer

    model = save_tiny_model(tmp_path / "model")
    save_tiny_tokenizer(model)
    data = alpaca_jsonl(tmp_path / "a.jsonl", 12)
    cfg = write_config(tmp_path, model, training={"max_steps": 6}, sequence={"packing": True, "max_length": 128},
                       dataset={"path": str(data), "format": "alpaca", "num_samples": None, "max_samples": 10},
                       extra={"data": {"streaming": True, "stream_buffer": 4}, "template": {"name": "chatml"}})
    done = subprocess.run([sys.executable, "-m", "runner", "train", str(cfg)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in steps if m["kind"] == "train"]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    plan = json.loads((run / "plan.json").read_text())
    assert plan["launch"]["data_stats"]["cache"].startswith("off")
    assert "first" in plan["launch"]["data_stats"]["train"]["streamed"]
