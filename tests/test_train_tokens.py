"""The tokens every stage's trainer feeds the model are exactly the data pipeline's: captured at the
model's forward during real training steps and matched against the pipeline's rows."""

import pytest
import torch
from transformers import TrainerCallback

from runner import data as pipeline
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import save_tiny_model, write_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


class Capture(TrainerCallback):
    """Records the keyword inputs of every training forward of the decoder (the transformer stack
    under any PEFT wrapper, reached by the model's own forward and by runner's chunked-loss fast
    path alike), and the labels of the top-level forward when the model's own loss runs."""

    def __init__(self):
        self.calls = []
        self.labels = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def decoder_hook(module, args_, kwargs_):
            if module.training:
                call = {k: v.detach().clone() for k, v in kwargs_.items() if torch.is_tensor(v)}
                if args_ and torch.is_tensor(args_[0]):
                    call["input_ids"] = args_[0].detach().clone()
                self.calls.append(call)

        def top_hook(module, args_, kwargs_):
            if module.training and torch.is_tensor(kwargs_.get("labels")):
                self.labels.append(kwargs_["labels"].detach().clone())

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.get_decoder().register_forward_pre_hook(decoder_hook, with_kwargs=True)
        model.register_forward_pre_hook(top_hook, with_kwargs=True)


def captured(tmp_path, model_dir, stage, **kw):
    training = {"max_steps": 2, "micro_batch_size": 3, **kw.pop("training", {})}
    plan = make_plan(write_config(tmp_path, model_dir, stage=stage, training=training, **kw))
    capture = Capture()
    run(plan, callbacks=[capture])
    rows = pipeline.build_datasets(plan, pipeline.load_tokenizer(plan)).train
    assert capture.calls, "no training forward was seen"
    return capture, rows


def unpadded(ids, mask):
    return [tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)]


def test_sft_padded_rows_are_the_pipelines(tmp_path, model_dir):
    capture, rows = captured(tmp_path, model_dir, "sft")
    expected = {tuple(r["input_ids"]) for r in rows}
    seen = []
    for call in capture.calls:
        assert "attention_mask" in call and "position_ids" not in call
        seen += unpadded(call["input_ids"], call["attention_mask"])
    assert len(seen) == 2 * 3 and set(seen) <= expected


def test_sft_labels_reaching_the_models_own_loss_are_the_pipelines(tmp_path, model_dir):
    capture, rows = captured(tmp_path, model_dir, "sft", training={"chunked_loss": False})
    expected = {tuple(r["input_ids"]): tuple(r["labels"]) for r in rows}
    assert len(capture.labels) == len(capture.calls) == 2
    for call, labels in zip(capture.calls, capture.labels):
        for ids, row_labels, mask in zip(call["input_ids"], labels, call["attention_mask"]):
            key = tuple(ids[mask.bool()].tolist())
            assert tuple(row_labels[mask.bool()].tolist()) == expected[key]
            assert (row_labels[~mask.bool()] == -100).all()


def test_sft_packed_rows_reach_the_model_without_attention_mask(tmp_path, model_dir):
    capture, rows = captured(tmp_path, model_dir, "sft", sequence={"packing": True, "max_length": 256},
                             training={"chunked_loss": False})
    packed = [(r["input_ids"], r["labels"], r["position_ids"]) for r in rows]
    assert any(0 in p[2][1:] for p in packed), "the slice should pack several samples into a row"
    assert len(capture.labels) == len(capture.calls)
    for call, labels_batch in zip(capture.calls, capture.labels):
        assert call.get("attention_mask") is None, "a packed batch must not carry an attention mask"
        for ids, labels, positions in zip(call["input_ids"], labels_batch, call["position_ids"]):
            match = [p for p in packed if ids[: len(p[0])].tolist() == p[0]]
            assert match, "packed row not from the pipeline"
            want_ids, want_labels, want_pos = match[0]
            n = len(want_ids)
            assert labels[:n].tolist() == want_labels and positions[:n].tolist() == want_pos
            assert (labels[n:] == -100).all()


def test_packed_rows_reach_the_decoder_without_attention_mask_on_the_fast_path(tmp_path, model_dir):
    capture, rows = captured(tmp_path, model_dir, "sft", sequence={"packing": True, "max_length": 256})
    packed = {tuple(r["input_ids"]): r["position_ids"] for r in rows}
    for call in capture.calls:
        assert call.get("attention_mask") is None and "position_ids" in call
        for ids, positions in zip(call["input_ids"], call["position_ids"]):
            match = [k for k in packed if tuple(ids[: len(k)].tolist()) == k]
            assert match and positions[: len(match[0])].tolist() == packed[match[0]]


def test_pt_rows_are_the_pipelines(tmp_path, model_dir):
    capture, rows = captured(tmp_path, model_dir, "pt")
    expected = {tuple(r["input_ids"]) for r in rows}
    for call in capture.calls:
        assert set(unpadded(call["input_ids"], call["attention_mask"])) <= expected


@pytest.mark.parametrize("stage", ["dpo", "orpo", "simpo", "cpo", "rm"])
def test_preference_pairs_are_the_pipelines(tmp_path, model_dir, stage):
    capture, rows = captured(tmp_path, model_dir, stage)
    chosen = {tuple(r["prompt_input_ids"] + r["chosen_input_ids"]) for r in rows}
    rejected = {tuple(r["prompt_input_ids"] + r["rejected_input_ids"]) for r in rows}
    seen = [seq for call in capture.calls for seq in unpadded(call["input_ids"], call["attention_mask"])]
    # chosen and rejected of 3 pairs, 2 steps (DPO runs its reference through the same model too; a
    # reward model scores both sides in one forward)
    assert len(seen) % (2 * 2 * 3) == 0 and seen
    assert set(seen) <= chosen | rejected
    assert set(seen) & chosen and set(seen) & rejected


def test_kto_pairs_are_the_pipelines(tmp_path, model_dir):
    capture, rows = captured(tmp_path, model_dir, "kto")
    prompts = [tuple(r["prompt_input_ids"]) for r in rows]
    completions = {tuple(r["completion_input_ids"]) for r in rows}
    matched = {tuple(r["prompt_input_ids"] + r["completion_input_ids"]) for r in rows}
    seen = [seq for call in capture.calls for seq in unpadded(call["input_ids"], call["attention_mask"])]
    assert set(seen) & matched, "no (prompt, completion) pair of the pipeline reached the model"
    for seq in seen:
        # Either a pipeline pair, or KTO's KL estimate: a prompt with another row's completion.
        assert seq in matched or any(seq[: len(p)] == p and seq[len(p):] in completions for p in prompts)
