"""Where the data pipeline meets vision-language models: which rows need a processor, and the
refusals that come before any row is tokenized."""

from __future__ import annotations

from runner.errors import DataError, UserError


def check_media_rows(plan, items, tokenizer):
    """(family, processor) for a vision-language model, (None, None) for a text model. Rows with
    images or videos for a text-only model stop the run (their media would be dropped)."""
    from runner.data import media
    from runner.data.vlm import load_processor, packing_refusal, plan_family
    from runner.plan.parallelism import sizes

    family = plan_family(plan)
    if family is None:
        with_media = next((item for item in items if media.has_media(item.row)), None)
        if with_media is not None:
            raise DataError(f"this row has images or videos, but {plan.model.path} is a text-only model",
                            where=with_media.origin,
                            hint="use a vision-language model (Qwen2.5-VL, Gemma 3, LLaVA, Idefics3 ...), or "
                                 "remove the images and videos from the rows")
        return None, None
    if plan.data.sequence.packing and packing_refusal(family):
        raise UserError(packing_refusal(family), where="sequence.packing", hint="set sequence.packing: false")
    cp, sp = sizes(plan.distributed)
    if cp > 1 or sp > 1:
        key = "context_parallel" if cp > 1 else "sequence_parallel"
        raise UserError(f"distributed.{key} splits each row's token ids, labels and positions over processes, not "
                        f"its images: a piece of a {family.name} row would hold image tokens without their features",
                        where=f"distributed.{key}", hint=f"set distributed.{key}: 1 (fsdp or deepspeed zero3 still "
                        "shard the weights)")
    if plan.data.stage == "pt":
        raise UserError("stage pt has no chat turns to place images in", where="training.stage",
                        hint="train a vision-language model with stage sft")
    return family, load_processor(plan, tokenizer)
