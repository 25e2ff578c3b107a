"""The tokens every stage's trainer feeds the model are exactly the data pipeline's: captured at the
model's forward during real training steps and matched against the pipeline's rows."""

import pytest
import torch
from transformers import TrainerCallback

from runner import data as pipeline
from runner.plan import make_plan
from runner.train import run
from tests.tiny_model import save_tiny_model, write_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


class Capture(TrainerCallback):
    """Records the keyword inputs of every training forward of the trainer's model."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def hook(module, args_, kwargs_):
            if module.training:
                call = {k: v.detach().clone() for k, v in kwargs_.items() if torch.is_tensor(v)}
                if args_ and torch.is_tensor(args_[0]):  # ORPO passes input_ids positionally
                    call["input_ids"] = args_[0].detach().clone()
                self.calls.append(call)

        model.register_forward_pre_hook(hook, with_kwargs=True)


def captured(tmp_path, model_dir, stage, **kw):
    plan = make_plan(write_config(tmp_path, model_dir, stage=stage,
                                  training={"max_steps": 2, "micro_batch_size": 3}, **kw))
    capture = Capture()
    run(plan, callbacks=[capture])
    rows = pipeline.build_datasets(plan, pipeline.load_tokenizer(plan)).train
    assert capture.calls, "no training forward was seen"
    return capture.calls, rows


def unpadded(ids, mask):
    return [tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)]


def test_sft_padded_rows_and_labels_are_the_pipelines(tmp_path, model_dir):
    calls, rows = captured(tmp_path, model_dir, "sft")
    expected = {tuple(r["input_ids"]): tuple(r["labels"]) for r in rows}
    seen = 0
    for call in calls:
        assert "attention_mask" in call and "position_ids" not in call
        for ids, labels, mask in zip(call["input_ids"], call["labels"], call["attention_mask"]):
            key = tuple(ids[mask.bool()].tolist())
            assert key in expected, "the trainer fed a sequence the pipeline never produced"
            assert tuple(labels[mask.bool()].tolist()) == expected[key]
            assert (labels[~mask.bool()] == -100).all()
            seen += 1
    assert seen == 2 * 3


def test_sft_packed_rows_reach_the_model_without_attention_mask(tmp_path, model_dir):
    calls, rows = captured(tmp_path, model_dir, "sft", sequence={"packing": True, "max_length": 256})
    packed = [(r["input_ids"], r["labels"], r["position_ids"]) for r in rows]
    assert any(0 in p[2][1:] for p in packed), "the slice should pack several samples into a row"
    for call in calls:
        assert call.get("attention_mask") is None, "a packed batch must not carry an attention mask"
        for ids, labels, positions in zip(call["input_ids"], call["labels"], call["position_ids"]):
            match = [p for p in packed if ids[: len(p[0])].tolist() == p[0]]
            assert match, "packed row not from the pipeline"
            want_ids, want_labels, want_pos = match[0]
            n = len(want_ids)
            assert labels[:n].tolist() == want_labels and positions[:n].tolist() == want_pos
            assert (labels[n:] == -100).all()


def test_pt_rows_are_the_pipelines(tmp_path, model_dir):
    calls, rows = captured(tmp_path, model_dir, "pt")
    expected = {tuple(r["input_ids"]) for r in rows}
    for call in calls:
        assert set(unpadded(call["input_ids"], call["attention_mask"])) <= expected


@pytest.mark.parametrize("stage", ["dpo", "orpo"])
def test_preference_pairs_are_the_pipelines(tmp_path, model_dir, stage):
    calls, rows = captured(tmp_path, model_dir, stage)
    chosen = {tuple(r["prompt_input_ids"] + r["chosen_input_ids"]) for r in rows}
    rejected = {tuple(r["prompt_input_ids"] + r["rejected_input_ids"]) for r in rows}
    seen = [seq for call in calls for seq in unpadded(call["input_ids"], call["attention_mask"])]
    # chosen and rejected of 3 pairs, 2 steps (DPO runs its reference through the same model too)
    assert len(seen) % (2 * 2 * 3) == 0 and seen
    assert set(seen) <= chosen | rejected
    assert set(seen) & chosen and set(seen) & rejected


def test_kto_pairs_are_the_pipelines(tmp_path, model_dir):
    calls, rows = captured(tmp_path, model_dir, "kto")
    prompts = [tuple(r["prompt_input_ids"]) for r in rows]
    completions = {tuple(r["completion_input_ids"]) for r in rows}
    matched = {tuple(r["prompt_input_ids"] + r["completion_input_ids"]) for r in rows}
    seen = [seq for call in calls for seq in unpadded(call["input_ids"], call["attention_mask"])]
    assert set(seen) & matched, "no (prompt, completion) pair of the pipeline reached the model"
    for seq in seen:
        # Either a pipeline pair, or KTO's KL estimate: a prompt with another row's completion.
        assert seq in matched or any(seq[: len(p)] == p and seq[len(p):] in completions for p in prompts)
