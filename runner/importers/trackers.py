"""Other tools' tracker settings that need more than a one-to-one key (runner.importers.axolotl_keys
holds those)."""
from __future__ import annotations

from runner.importers.common import Translation, pop_key as _pop


SWANLAB_MODES = {"cloud": "online", "local": "local", "offline": "offline", "disabled": "disabled"}


def llamafactory_swanlab(keys: dict, tr: Translation) -> None:
    """LLaMA-Factory's use_swanlab and its swanlab_* settings; runner writes SwanLab's files into the
    run directory, and a key is never copied into a config file."""
    names = ("swanlab_project", "swanlab_workspace", "swanlab_run_name", "swanlab_mode", "swanlab_api_key",
             "swanlab_logdir")
    values = {name: _pop(keys, name, tr) for name in names}
    on = _pop(keys, "use_swanlab", tr)
    if not on or (isinstance(on, str) and on.lower() == "false"):
        for name, value in values.items():
            if value is not None:
                tr.skip(name, value, "use_swanlab is off")
        return
    tr.set("tracking.swanlab.project", str(values["swanlab_project"] or "llamafactory"))
    if values["swanlab_workspace"] is not None:
        tr.set("tracking.swanlab.workspace", str(values["swanlab_workspace"]))
    if values["swanlab_run_name"] is not None:
        tr.set("tracking.swanlab.name", str(values["swanlab_run_name"]))
    mode = values["swanlab_mode"] or "cloud"
    if mode in SWANLAB_MODES:
        tr.set("tracking.swanlab.mode", SWANLAB_MODES[mode])
    else:
        tr.skip("swanlab_mode", mode, "SwanLab modes: cloud, local, offline, disabled")
    if values["swanlab_api_key"] is not None:
        tr.skip("swanlab_api_key", "<secret>", "a key is not copied into a config: export SWANLAB_API_KEY")
    if values["swanlab_logdir"] is not None:
        tr.skip("swanlab_logdir", values["swanlab_logdir"], "SwanLab writes into the run directory (swanlog/)")
