"""Checks of the data-at-scale and continuing settings (data.streaming, adapter.init_from):
combinations refused before anything loads. Called by runner.config.checks.check."""

from __future__ import annotations

STREAMING_STAGES = ("sft", "pt")
# Settings an existing adapter brings itself: the config's values would be silently overridden.
ADAPTER_SHAPE_KEYS = ("r", "alpha", "dropout", "target_modules", "exclude_modules", "dora", "rslora", "init", "bias",
                      "modules_to_save")


def check_scale(cfg: dict, raw: dict, error, warn) -> None:
    data, training, adapter = cfg["data"], cfg["training"], cfg["adapter"]
    if data["streaming"]:
        stage = training["stage"]
        if stage not in STREAMING_STAGES:
            error(("data", "streaming"), f"stage {stage} cannot stream its data (sft and pt can)",
                  "prepare the data whole: data.streaming: false")
        if training["max_steps"] is None:
            error(("training", "max_steps"), "data.streaming needs training.max_steps: a stream's length is "
                  "not known before it is read", "set training.max_steps (epochs do not apply to a stream)")
        if cfg["val_size"]:
            error(("val_size",), "val_size splits rows off the whole dataset, which data.streaming never holds",
                  "give the eval rows as eval_datasets (they are read whole)")
        for i, ds in enumerate(cfg["datasets"]):
            if ds["num_samples"] is not None:
                error(("datasets", i, "num_samples"), "num_samples samples from the whole dataset, which "
                      "data.streaming never holds", "use max_samples: the first N rows, never repeated")
            if ds["weight"] != 1.0:
                error(("datasets", i, "weight"), "weight resamples the whole dataset, which data.streaming never "
                      "holds", "streamed datasets are read one after another, each once per pass")
    elif "stream_buffer" in (raw.get("data") or {}):
        warn(("data", "stream_buffer"), "applies only with data.streaming: true; ignored")
    if adapter["init_from"] is not None:
        if adapter["kind"] != "lora":
            error(("adapter", "init_from"), f"continues a LoRA adapter, but adapter.kind is {adapter['kind']}",
                  "set adapter.kind: lora, or point model.path at a merged or fully fine-tuned model")
        written = raw.get("adapter") or {}
        for key in ADAPTER_SHAPE_KEYS:
            if key in written:
                warn(("adapter", key), "adapter.init_from is set: the existing adapter's own value applies; ignored")
