"""model.rope_scaling and model.max_position: what they write into the model's config (transformers
5 keeps RoPE settings in `config.rope_parameters`), and the checks that need only config.json, made
at plan time. The checks that need the model's code (does its rotary embedding read rope_parameters
at all?) run before the weights load (runner.train.model.apply_rope). No torch here."""

from __future__ import annotations

import json
from pathlib import Path

from runner.errors import UserError

# Methods that scale from a pretraining length kept in rope_parameters (transformers' own list).
WITH_ORIGINAL = ("yarn", "longrope", "llama3")
# Keys of rope_parameters that are the model's own, kept when runner replaces the scaling.
KEPT = ("rope_theta", "partial_rotary_factor")


def updated(scaling: dict | None, max_position: int | None, model_max: int | None,
            current: dict | None) -> tuple[dict | None, int | None]:
    """(rope_parameters, max_position_embeddings) the model runs with. `current` is the model's flat
    rope_parameters (or {} for an older config.json: its rope_theta is added by transformers)."""
    if scaling is None:
        return None, max_position or model_max
    params = {k: v for k, v in (current or {}).items() if k in KEPT}
    params.update({k: v for k, v in scaling.items() if k != "type" and v is not None})  # null: unset
    params["rope_type"] = scaling["type"]
    original = _written(scaling, "original_max_position_embeddings") or model_max
    if scaling["type"] in WITH_ORIGINAL and original:
        params["original_max_position_embeddings"] = original
    if max_position:
        return params, max_position
    factor = _written(scaling, "factor")
    if scaling["type"] == "dynamic" or not factor or not original:
        # transformers' dynamic scaling starts past max_position_embeddings: it stays the trained length
        return params, model_max
    return params, int(round(original * factor))


def _written(scaling: dict, key: str):
    """A rope_scaling parameter as written (they have no defaults: absence means the method's own)."""
    return scaling[key] if key in scaling else None  # the schema fills null for a key not written


def _rope_keys(config: dict) -> dict | None:
    """The RoPE settings of a config.json (the text config of a vision-language model), or None."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if isinstance(text.get("rope_parameters"), dict):
        return text["rope_parameters"]
    stored = text  # a file transformers wrote: its own older key, not runner's model.rope_scaling
    if isinstance(stored.get("rope_scaling"), dict):
        return {**stored["rope_scaling"], **({"rope_theta": stored["rope_theta"]} if "rope_theta" in stored else {})}
    if "rope_theta" in text:
        return {"rope_theta": text["rope_theta"]}
    return None


def check(model_cfg: dict, model_dir: Path | None, where) -> list[UserError]:
    """Refusals that config.json alone decides. A hub model not in the cache is checked at load."""
    scaling, max_position = model_cfg["rope_scaling"], model_cfg["max_position"]
    if scaling is None and max_position is None:
        return []
    path = ("model", "rope_scaling") if scaling is not None else ("model", "max_position")
    file = model_dir / "config.json" if model_dir else None
    if file is None or not file.is_file():
        return []
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # loading the model reports an unreadable config.json with its own message
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    kind = config.get("model_type", "?")
    model_max = text.get("max_position_embeddings")
    errors = []

    def error(message, hint=None, at=path):
        errors.append(UserError(f"{'.'.join(at)}: {message}", where=where(at), hint=hint))

    if scaling is None:
        return errors
    rope = _rope_keys(config)
    if rope is None:
        error(f"the model ({kind}, {file}) has no rotary position embeddings to scale (its config.json names no "
              "rope_parameters, rope_scaling or rope_theta)",
              "remove model.rope_scaling; this architecture's context length cannot be stretched this way")
        return errors
    labels = set(text.get("layer_types") or ())
    nested = sorted(k for k in rope if k in labels)
    if nested:
        error(f"the model ({kind}) sets RoPE per layer type ({', '.join(nested)}); model.rope_scaling writes one "
              "setting for every layer", "edit rope_parameters in a copy of the model's config.json instead")
        return errors
    if scaling["type"] == "longrope":
        head_dim = text.get("head_dim") or (text.get("hidden_size", 0) // max(1, text.get("num_attention_heads", 1)))
        dim = int(head_dim * (rope.get("partial_rotary_factor") or text.get("partial_rotary_factor") or 1.0))
        for key in ("short_factor", "long_factor"):
            if head_dim and len(scaling[key]) != dim // 2:
                error(f"{key} has {len(scaling[key])} numbers; this model's rotary dimension {dim} needs {dim // 2}",
                      at=("model", "rope_scaling", key))
    original = _written(scaling, "original_max_position_embeddings") or model_max
    params, new_max = updated(scaling, max_position, model_max, rope)
    if scaling["type"] in ("llama3", "yarn") and original and new_max and new_max <= original:
        error(f"{scaling['type']} stretches the context past original_max_position_embeddings ({original}), but "
              f"max_position is {new_max}", "raise model.max_position or leave it unset (original x factor)",
              at=("model", "max_position"))
    return errors


def sequence_warning(model_cfg: dict, model_dir: Path | None, max_length: int, where) -> UserError | None:
    """sequence.max_length past the context the model runs with: positions it never saw."""
    text = _config_json(model_dir)
    if text is None:
        return None
    model_max = text.get("max_position_embeddings")
    if not isinstance(model_max, int) or model_cfg["rope_scaling"] is not None:
        return None
    limit = model_cfg["max_position"] or model_max
    if max_length <= limit:
        return None
    return UserError(f"sequence.max_length: {max_length} is past the model's context of {limit} positions",
                     where=where(("sequence", "max_length")),
                     hint="set model.rope_scaling (e.g. {type: yarn, factor: "
                          f"{-(-max_length // model_max)}}}) so the positions stay in the range it was trained on")


def _config_json(model_dir: Path | None) -> dict | None:
    file = model_dir / "config.json" if model_dir else None
    if file is None or not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("text_config") if isinstance(config.get("text_config"), dict) else config


def max_position(model_cfg: dict, model_dir: Path | None) -> int | None:
    """The Plan's model.max_position: as written, else what rope_scaling makes of config.json's length
    (None when it cannot be read here: the load decides it the same way)."""
    if model_cfg["max_position"] or model_cfg["rope_scaling"] is None:
        return model_cfg["max_position"]
    text = _config_json(model_dir)
    if text is None or not isinstance(text.get("max_position_embeddings"), int):
        return None
    return updated(model_cfg["rope_scaling"], None, text["max_position_embeddings"], None)[1]
