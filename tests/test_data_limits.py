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
    # weight is bounded the same way (the schema allows up to 1000, the data 100 repeats);
    # upsampling within the bound still works
    cfg = write_config(tmp_path, [{"path": str(data), "format": "alpaca", "weight": 1000}], model=model,
                       template={"name": "chatml"})
    assert main(["preprocess", str(cfg)]) == 2
    assert "weight 1000 would repeat the 91 rows" in capsys.readouterr().err
    cfg = write_config(tmp_path, [{"path": str(data), "format": "alpaca", "num_samples": 91 * MAX_REPEAT}],
                       model=model, template={"name": "chatml"})
    assert main(["preprocess", str(cfg)]) == 0
    assert f"train: {91 * MAX_REPEAT} rows" in capsys.readouterr().out


def test_a_template_that_loops_for_ever_stops_with_the_row_and_the_template(tmp_path):
    """Nested loops of range(100000) (the sandbox's own bound) on one row: 10^10 iterations."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from runner.data.render import RENDER_SECONDS

    template = tmp_path / "slow.jinja"
    template.write_text(
        "{% for message in messages %}"
        "{% if 'slow' in message['content'] %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% endfor %}{% endfor %}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    data = tmp_path / "rows.jsonl"
    rows = [{"instruction": "hi", "output": "ho"}, {"instruction": "go slow", "output": "x"}, {"instruction": "a", "output": "b"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for policy in ("error", "skip"):
        cfg = write_config(tmp_path, [{"path": str(data), "format": "alpaca", "on_bad_row": policy}],
                           model={"path": str(tiny_model_dir(tmp_path))},
                           template={"name": "jinja", "jinja": str(template)})
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
        done = subprocess.run([sys.executable, "-m", "runner", "preprocess", str(cfg)], capture_output=True,
                              text=True, env=env, timeout=RENDER_SECONDS * 6 + 60)
        assert done.returncode == 2, done.stderr[-2000:]
        assert (f"{data}:2: error: template file:{template} took more than {RENDER_SECONDS:g} s to render this row"
                in done.stderr), done.stderr
        assert "Traceback" not in done.stderr


def test_a_template_that_always_loops_is_refused_by_the_template_check(tmp_path, capsys):
    from runner.data.render import RENDER_SECONDS

    template = tmp_path / "spin.jinja"
    template.write_text("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                        "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    data = tmp_path / "identity.json"
    shutil.copy(SHARED / "identity.json", data)
    cfg = write_config(tmp_path, [{"path": str(data), "format": "alpaca"}], model={"path": str(tiny_model_dir(tmp_path))},
                       template={"name": "jinja", "jinja": str(template)})
    for command in (["preprocess"], ["lint", "--deep"]):
        assert main([*command, str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"template file:{template} took more than {RENDER_SECONDS:g} s to render a two-turn conversation" in err
        assert "Traceback" not in err


def test_a_row_of_20000_turns_is_bounded_as_a_whole(tmp_path):
    """Each rendering of it is quick (0.1 s), but masking renders it once per turn: hours in all."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from runner.data.render import RENDER_SECONDS

    turns = [m for i in range(10_000) for m in ({"role": "user", "content": f"question {i}"},
                                                 {"role": "assistant", "content": f"answer {i}"})]
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": turns[:2]}) + "\n" + json.dumps({"messages": turns}) + "\n")
    cfg = write_config(tmp_path, [{"path": str(data), "format": "openai", "on_bad_row": "skip"}],
                       model={"path": str(tiny_model_dir(tmp_path))}, template={"name": "chatml"})
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "runner", "preprocess", str(cfg)], capture_output=True, text=True,
                          env=env, timeout=RENDER_SECONDS * 3 + 60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{data}:2: error: template chatml took more than {RENDER_SECONDS:g} s to render this row" in done.stderr
