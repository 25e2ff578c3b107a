"""Limits that keep one config or one template from exhausting the machine: upsampling is bounded
before any row is repeated, and a chat template that loops for ever stops with the row and the
template named."""

from __future__ import annotations

import shutil

from runner.cli import main
from runner.data.mixing import MAX_REPEAT
from test_data_support import SHARED, tiny_model_dir, write_config


def test_num_samples_3e9_is_refused_before_allocating(tmp_path, capsys):
    data = tmp_path / "identity.json"
    shutil.copy(SHARED / "identity.json", data)
    model = {"path": str(tiny_model_dir(tmp_path))}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{path: {model['path']}}}\ntemplate: {{name: chatml}}\n"
                   f"datasets:\n  - {{path: {data}, format: alpaca, num_samples: 3e9}}\n"
                   f"data: {{cache_dir: {tmp_path / 'cache'}}}\n")
    assert main(["preprocess", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"datasets: {data}: error: num_samples 3000000000 would repeat the 91 rows" in err
    assert f"at most {MAX_REPEAT} times" in err and "training.epochs" in err and "Traceback" not in err
    # weight is bounded the same way; upsampling within the bound still works
    cfg = write_config(tmp_path, [{"path": str(data), "format": "alpaca", "weight": 1e9}], model=model,
                       template={"name": "chatml"})
    assert main(["preprocess", str(cfg)]) == 2
    assert "weight 1e+09 would repeat the 91 rows" in capsys.readouterr().err
    cfg = write_config(tmp_path, [{"path": str(data), "format": "alpaca", "num_samples": 91 * MAX_REPEAT}],
                       model=model, template={"name": "chatml"})
    assert main(["preprocess", str(cfg)]) == 0
    assert f"train: {91 * MAX_REPEAT} rows" in capsys.readouterr().out
