"""Axolotl `datasets:` / `test_datasets:` entries and the chat template keys -> runner datasets and
`template`. Dataset types follow Axolotl's docs (dataset-formats/*.qmd, rlhf.qmd)."""

from __future__ import annotations

from pathlib import Path

from runner.importers.axolotl_keys import PREFERENCE_STAGES
from runner.importers.common import Translation, columns_for, dataset_path, is_unset, split_list, standard_role

# Axolotl chat_template names (and legacy sharegpt `conversation:` names) -> runner template.name.
TEMPLATES = {
    "tokenizer_default": "tokenizer", "chatml": "chatml", "llama3": "llama3", "llama-3": "llama3",
    "llama2": "llama2", "llama-2": "llama2", "mistral_v1": "mistral", "mistral_v2v3": "mistral",
    "mistral_v3_tekken": "mistral", "mistral_v7_tekken": "mistral", "mistral": "mistral", "gemma": "gemma",
    "phi_3": "phi3", "phi_35": "phi3", "phi3": "phi3", "qwen_25": "qwen2.5", "qwen2.5": "qwen2.5", "qwen3": "qwen3",
    "deepseek_v2": "deepseek", "deepseek_v3": "deepseek", "vicuna": "vicuna", "vicuna_v1.1": "vicuna",
    "alpaca": "alpaca", "jinja": "jinja",
}
# Plain instruction types: Axolotl type -> runner alpaca columns ({} = Axolotl's alpaca field names).
INSTRUCT = {
    "alpaca": {}, "alpaca_chat": {}, "alpaca_instruct": {}, "alpaca_w_system": {},
    "alpaca_chat.load_qa": {"instruction": "question", "output": "answer"},
    "alpaca_chat.load_concise": {}, "alpaca_chat.load_camel_ai": {"instruction": "message_1", "output": "message_2"},
    "alpaca_w_system.load_open_orca": {"instruction": "question", "output": "response", "system": "system_prompt"},
    "gpteacher": {"output": "response"}, "oasst": {},
    "context_qa": {"instruction": "question", "input": "context", "output": "answer"},
}
# Preference types (DPO/IPO/ORPO): the row layout after the template prefix (chatml., llama3., ...).
PREFERENCE = {
    "intel": {"prompt": "question"}, "prompt_pairs": {}, "icr": {"prompt": "input"},
    "argilla": {"prompt": "instruction", "chosen": "chosen_response", "rejected": "rejected_response"},
    "ultra": {}, "argilla_chat": {},
}
KTO = {"intel": {"prompt": "question"}, "prompt_pairs": {}, "ultra": {}, "argilla": {"prompt": "instruction"}}
WHOLE_CONVERSATION = {"ultra", "argilla_chat"}
# Entry keys handled below; everything else in an entry is reported.
ENTRY_UNSUPPORTED = {
    "name": "hub dataset configurations are not supported; give a file or a hub id with its default config",
    "revision": "no dataset revision pinning", "shards": "no dataset sharding", "shards_idx": "no dataset sharding",
    "preprocess_shards": "runner preprocesses in one pass", "trust_remote_code": "no dataset loading scripts",
    "drop_system_message": "no system-turn dropping", "message_field_training": "no per-turn training flags",
    "message_field_training_detail": "no per-span training flags", "split_thinking": "no reasoning-trace splitting",
    "train_on_split": "no per-split training", "field_thinking": "no reasoning column",
}


def translate_all(keys: dict, tr: Translation, bases: list[Path], out_dir: Path) -> None:
    _template(keys, tr, bases, out_dir)
    stage = tr.get("training.stage", "sft")
    for group, target in (("datasets", "datasets"), ("test_datasets", "eval_datasets")):
        entries = keys.pop(group, None)
        if is_unset(entries):
            continue
        out = []
        for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            out += _entry(entry, f"{group}[{i}]", stage, tr, bases, out_dir)
        if out:
            tr.config[target] = out
    pretraining = keys.pop("pretraining_dataset", None)
    if not is_unset(pretraining):
        for i, entry in enumerate(pretraining if isinstance(pretraining, list) else [pretraining]):
            entry = entry if isinstance(entry, dict) else {"path": entry}
            entry = {**entry, "type": "completion"}
            tr.config.setdefault("datasets", []).extend(
                _entry(entry, f"pretraining_dataset[{i}]", "pt", tr, bases, out_dir))
        tr.set("training.stage", "pt")
    formats = {d.get("format") for d in tr.config.get("datasets", [])}
    if formats == {"text"} and tr.get("training.stage", "sft") == "sft":
        tr.set("training.stage", "pt")
        tr.note("datasets", "completion data: imported as continued pretraining (training.stage: pt)")


def _template_name(value, key: str, tr: Translation) -> str | None:
    text = str(value)
    if text.startswith("tokenizer_default_fallback_"):
        tr.note(key, f"{text}: runner uses the tokenizer's template and stops if it has none (no fallback)")
        return "tokenizer"
    if text in TEMPLATES:
        return TEMPLATES[text]
    tr.skip(key, value, f"no runner template of that name; runner has {', '.join(sorted(set(TEMPLATES.values())))}")
    return None


def _template(keys: dict, tr: Translation, bases: list[Path], out_dir: Path) -> None:
    name = keys.pop("chat_template", None)
    jinja = keys.pop("chat_template_jinja", None)
    if not is_unset(name):
        if (runner_name := _template_name(name, "chat_template", tr)) is not None:
            tr.set("template.name", runner_name)
    if not is_unset(jinja):
        _jinja(jinja, "chat_template_jinja", tr, bases, out_dir)


def _jinja(value: str, key: str, tr: Translation, bases: list[Path], out_dir: Path) -> None:
    from runner.importers.common import locate, relative_to_output

    found = locate(str(value), bases) if "\n" not in str(value) and len(str(value)) < 300 else None
    if found is not None and found.is_file():
        tr.set("template.name", "jinja")
        tr.set("template.jinja", relative_to_output(found, out_dir))
    else:
        tr.skip(key, value, "an inline template: save it to a .jinja file and set template.name: jinja, template.jinja")


def _split_type(value) -> tuple[str, str]:
    """`chatml.intel` -> ("chatml", "intel"); `alpaca:chat` -> ("alpaca", ""); `alpaca` -> ("alpaca", "")."""
    text = str(value).split(":")[0]
    prefix, _, loader = text.partition(".")
    return prefix, loader


def _files(entry: dict, where: str, tr: Translation, bases: list[Path], out_dir: Path) -> list[dict]:
    """Runner path/type pairs of one entry: `path`, or `path: json` + `data_files`."""
    data_files = entry.get("data_files")
    path = entry.get("path")
    kind = entry.get("ds_type")
    type_map = {"json": "json", "jsonl": "jsonl", "parquet": "parquet", "csv": "csv", "text": "txt"}
    if not is_unset(data_files):
        places = [dataset_path(f, bases, out_dir, tr, where) for f in split_list(data_files)]
        if path and path not in type_map:
            tr.note(f"{where}.path", f"{path}: data_files name the files")
        kind = kind or (path if path in type_map else None)
    elif path:
        places = [dataset_path(str(path), bases, out_dir, tr, where)]
    else:
        tr.skip(where, entry, "no path")
        return []
    if not is_unset(kind):
        if kind in type_map:
            for place in places:
                if place.get("type") != "hub":
                    place["type"] = type_map[kind]
        else:
            tr.skip(f"{where}.ds_type", kind, "runner reads json, jsonl, csv, parquet and text files")
    return places


def _chat_columns(entry: dict, where: str, tr: Translation) -> tuple[str, dict, dict]:
    """(format, columns, roles) of a conversation entry (chat_template or legacy sharegpt)."""
    mapping = dict(entry.get("message_property_mappings") or {})
    for legacy, prop in (("message_field_role", "role"), ("message_field_content", "content")):
        if not is_unset(entry.get(legacy)):
            mapping.setdefault(prop, entry[legacy])
    role_key = mapping.pop("role", None)
    content_key = mapping.pop("content", None)
    messages = entry.get("field_messages")
    sharegpt = role_key in (None, "from") and content_key in (None, "value") and \
        (messages in (None, "conversations") and (role_key or str(entry.get("type", "")).startswith("sharegpt")))
    fmt = "sharegpt" if sharegpt else "messages"
    columns = {"messages": messages, "role": role_key, "content": content_key,
               "system": entry.get("field_system"), "tools": entry.get("field_tools")}
    for prop, column in mapping.items():
        if prop == "tool_calls":
            columns["tool_calls"] = column
        else:
            tr.skip(f"{where}.message_property_mappings.{prop}", column, "runner reads role, content and tool calls")
    roles = {}
    for target, sources in (entry.get("roles") or {}).items():
        if target not in ("system", "user", "assistant", "tool", "tool_call"):
            tr.skip(f"{where}.roles.{target}", sources, "runner roles: system, user, assistant, tool, tool_call")
            continue
        for source in split_list(sources):
            if not standard_role(source, target):
                roles[source] = target
    for legacy, target in (("field_human", "user"), ("field_model", "assistant")):
        if not is_unset(entry.get(legacy)) and not standard_role(entry[legacy], target):
            roles[entry[legacy]] = target
    return fmt, columns_for(fmt, columns), roles


def _training_turns(entry: dict, where: str, tr: Translation) -> None:
    roles = entry.get("roles_to_train")
    if not is_unset(roles):
        if split_list(roles) == ["assistant"]:
            tr.note(f"{where}.roles_to_train", "runner trains assistant turns (template.train_on: assistant)")
        else:
            tr.skip(f"{where}.roles_to_train", roles, "runner trains assistant turns, all tokens, or the last assistant turn")
    for key in ("train_on_eos", "train_on_eot"):
        value = entry.get(key)
        if not is_unset(value) and value != "turn":
            tr.skip(f"{where}.{key}", value, "runner trains the end-of-turn token of each trained turn")


def _custom(entry_type: dict, where: str, stage: str) -> tuple[str, dict, list]:
    """A `type:` mapping of field names (Axolotl's custom/user_defined formats)."""
    spec, left = dict(entry_type), []
    if stage in PREFERENCE_STAGES:
        fmt, fields = "preference", {"prompt": "field_prompt", "system": "field_system", "chosen": "field_chosen",
                                     "rejected": "field_rejected"}
    elif stage == "kto":
        fmt, fields = "kto", {"prompt": "field_prompt", "completion": "field_completion", "label": "field_label"}
    else:
        fmt, fields = "alpaca", {"instruction": "field_instruction", "input": "field_input",
                                 "output": "field_output", "system": "field_system"}
    columns = {ours: spec.pop(theirs) for ours, theirs in fields.items() if theirs in spec}
    for key, value in spec.items():
        if not is_unset(value) and not (key.endswith("_format") and value in ("{prompt}", "{chosen}", "{rejected}",
                                                                               "{completion}", "{system}")):
            left.append((f"{where}.type.{key}", value, "runner renders prompts with the chat template"))
    return fmt, columns_for(fmt, columns), left


def _entry(entry, where: str, stage: str, tr: Translation, bases: list[Path], out_dir: Path) -> list[dict]:
    if not isinstance(entry, dict):
        entry = {"path": entry}
    places = _files(entry, where, tr, bases, out_dir)
    if not places:
        return []
    kind = entry.get("type")
    fmt, columns, roles, system = None, {}, {}, None
    handled = {"path", "data_files", "ds_type", "type", "split", "chat_template", "chat_template_jinja",
               "field_messages", "message_property_mappings", "message_field_role", "message_field_content",
               "roles", "field_system", "field_tools", "field_human", "field_model", "roles_to_train",
               "train_on_eos", "train_on_eot", "conversation", "field", "field_chosen", "field_rejected"}
    if isinstance(kind, dict):
        fmt, columns, left = _custom(kind, where, stage)
        system = kind.get("system_prompt") or None
        for item in left:
            if item[0] != f"{where}.type.system_prompt":
                tr.skip(*item)
    else:
        prefix, loader = _split_type(kind) if kind else ("", "")
        full = f"{prefix}.{loader}" if loader else prefix
        if stage in PREFERENCE_STAGES:
            fmt, columns, roles = _preference(entry, prefix, loader, where, tr)
        elif stage == "kto":
            fmt, columns = _kto(prefix, loader, kind, where, tr)
        elif full in INSTRUCT:
            fmt, columns = "alpaca", columns_for("alpaca", INSTRUCT[full])
        elif prefix in ("chat_template", "sharegpt"):
            fmt, columns, roles = _chat_columns(entry, where, tr)
            _training_turns(entry, where, tr)
            if loader == "load_role":
                columns.setdefault("role", "role")
        elif prefix in ("completion", "pretrain"):
            fmt, columns = "text", columns_for("text", {"text": entry.get("field")})
        elif not kind:
            fmt = "alpaca"
            tr.note(where, "no type: read as alpaca")
        else:
            tr.skip(f"{where}.type", kind, "no runner format reads this Axolotl dataset type")
        if fmt is None:
            return []
    for key in ("chat_template", "conversation"):
        if not is_unset(entry.get(key)):
            name = _template_name(entry[key], f"{where}.{key}", tr)
            if name and tr.get("template.name") not in (None, name):
                tr.skip(f"{where}.{key}", entry[key], f"runner uses one template for all datasets ({tr.get('template.name')})")
            elif name:
                tr.set("template.name", name)
    if not is_unset(entry.get("chat_template_jinja")):
        _jinja(entry["chat_template_jinja"], f"{where}.chat_template_jinja", tr, bases, out_dir)
    for key, value in entry.items():
        if key in handled or is_unset(value):
            continue
        tr.skip(f"{where}.{key}", value, ENTRY_UNSUPPORTED.get(key, "no runner dataset setting of that name"))
    out = []
    for place in places:
        ds = {**place, "format": fmt}
        if columns:
            ds["columns"] = dict(columns)
        if roles:
            ds["roles"] = dict(roles)
        if system:
            ds["system"] = str(system)
        if not is_unset(entry.get("split")) and (entry["split"] != "train"):
            ds["split"] = str(entry["split"])
        out.append(ds)
    return out


def _preference(entry: dict, prefix: str, loader: str, where: str, tr: Translation) -> tuple:
    if prefix == "bradley_terry" and loader == "chat_template":
        # Axolotl's reward-model rows: a conversation plus a chosen and a rejected reply.
        tr.note(f"{where}.type", "bradley_terry.chat_template read as chat preference rows; check with "
                                 "`runner preprocess --show`")
        prefix = "chat_template"
    if prefix == "chat_template":
        fmt, columns, roles = _chat_columns(entry, where, tr)
        wanted = {"messages": entry.get("field_messages") or "messages",
                  "chosen": entry.get("field_chosen"), "rejected": entry.get("field_rejected")}
        wanted.update({k: v for k, v in columns.items() if k in ("role", "content", "system", "tools")})
        return "preference", columns_for("preference", wanted), roles
    if loader in PREFERENCE:
        if prefix in TEMPLATES and tr.get("template.name") is None:
            tr.set("template.name", TEMPLATES[prefix])
            tr.note(f"{where}.type", f"the {prefix} prompt style became template.name: {TEMPLATES[prefix]}")
        if loader in WHOLE_CONVERSATION:
            tr.note(f"{where}.type", "chosen/rejected hold whole conversations; check with `runner preprocess --show`")
        return "preference", columns_for("preference", PREFERENCE[loader]), {}
    if not prefix:
        tr.note(where, "no type: read as flat prompt/chosen/rejected rows")
        return "preference", {}, {}
    tr.skip(f"{where}.type", f"{prefix}.{loader}" if loader else prefix, "no runner format reads this preference layout")
    return None, {}, {}


def _kto(prefix: str, loader: str, kind, where: str, tr: Translation) -> tuple[str, dict]:
    if loader in KTO:
        if prefix in TEMPLATES and tr.get("template.name") is None:
            tr.set("template.name", TEMPLATES[prefix])
        return "kto", columns_for("kto", KTO[loader])
    if prefix not in ("", "chat_template"):
        tr.skip(f"{where}.type", kind, "no runner format reads this KTO layout")
        return None, {}
    return "kto", {}
