"""`runner serve`'s process: a non-local bind without a key refused (exit 2) before any model loads,
SIGTERM with a request in flight (it finishes, exit 0), a plain model folder served, and `runner
chat` in-process on the quickstart run. Tiny random models where the answer's words do not matter."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import pytest

from tests.serve_proc import REPO, Server, runner_env
from tests.tiny_model import save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("serve") / "tiny-llama")


def test_other_address_without_key_is_refused(tiny_dir):
    done = subprocess.run([sys.executable, "-m", "runner", "serve", str(tiny_dir), "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=runner_env())
    assert done.returncode == 2
    assert "without an API key" in done.stderr and "RUNNER_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr


def test_not_a_model_folder_is_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "runner", "serve", str(tmp_path), "--port", "0"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=runner_env())
    assert done.returncode == 2 and "neither a run directory nor a model folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_overload_503_and_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_dir):
    server = Server(tiny_dir, "--max-pending", "1")
    assert server.name == "tiny-llama" and server.url.startswith("http://127.0.0.1:")
    assert len([l for l in server.lines if l.strip()]) == 1  # one quiet line at start
    events, started = [], threading.Event()

    def stream():
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 80,
                "temperature": 0.9, "stream": True}
        with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=120) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    started.set()

    worker = threading.Thread(target=stream)
    worker.start()
    assert started.wait(60)
    busy = httpx.post(f"{server.url}/chat/completions", timeout=60,
                      json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]})
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "overloaded"
    assert server.terminate(timeout=90) == 0, server.stderr
    worker.join(30)
    assert events[-1] == "[DONE]"
    finish = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"] if c["finish_reason"]]
    assert finish == ["length"]  # the request ran to its end, not cut off by the shutdown
    assert "Traceback" not in server.stderr


def test_runner_chat_in_process(quickstart_run):
    session = "Who are you?\nWhat is your name?\n/reset\n/system You are a helpful assistant.\nWho created you?\n/exit\n"
    done = subprocess.run([sys.executable, "-m", "runner", "chat", str(quickstart_run), "--max-tokens", "48"],
                          input=session, capture_output=True, text=True, timeout=600, cwd=REPO, env=runner_env())
    assert done.returncode == 0, done.stderr
    answers = done.stdout.split("model> ")[1:]
    assert len(answers) == 3, done.stdout
    assert all("Nova" in a or "Acme Labs" in a for a in answers), done.stdout
    assert "(conversation cleared)" in done.stderr and "Traceback" not in done.stderr


def test_chat_loop_keeps_history_and_obeys_commands(monkeypatch):
    """The loop's bookkeeping, with a backend that records what it is sent (the model's side is
    covered end to end above and in test_serve.py)."""
    from runner.serve.chat_cli import loop

    sent = []

    def backend(messages):
        sent.append([dict(m) for m in messages])
        yield "answer "
        yield f"{len(sent)}"

    lines = iter(["first", "second", "/system Be brief.", "third", "/reset", "fourth", "/system", "fifth", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert loop(backend, None) == 0
    assert [m["content"] for m in sent[1]] == ["first", "answer 1", "second"]
    assert sent[2][0] == {"role": "system", "content": "Be brief."} and len(sent[2]) == 6
    assert [m["content"] for m in sent[3]] == ["Be brief.", "fourth"]
    assert [m["content"] for m in sent[4]] == ["fourth", "answer 4", "fifth"]


def test_serve_bench_smoke(tmp_path, shared_data):
    """bench/serve_bench.py on the CPU: a plain model folder served, the same requests concurrent
    and one by one, both figures recorded with the device and versions."""
    done = subprocess.run([sys.executable, "bench/serve_bench.py", "--smoke", "--data", str(shared_data),
                           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=runner_env())
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "serve-smoke.json").read_text())
    for side in ("concurrent", "sequential"):
        assert result[side]["completion_tokens"] > 0 and result[side]["tokens_per_s"] > 0
    assert result["concurrent"]["workers"] == result["requests"] == 4 and result["sequential"]["workers"] == 1
    assert result["server_exit_code"] == 0 and result["versions"]["transformers"] and result["device"]
    assert (tmp_path / "out" / "serve-smoke.md").read_text().startswith("| serve serve-tiny |")


def test_engine_greedy_equals_generate_and_sampling_samples(tiny_dir):
    """The engine's per-request settings: temperature 0 gives exactly transformers' greedy
    `generate`, batched or alone; temperature > 0 really samples (answers differ)."""
    import asyncio

    import torch

    from runner.serve.engine import Engine, load_served
    from runner.serve.protocol import Answer, Sampling

    served = load_served(tiny_dir)
    prompt = served.tokenizer("hello there, how are you", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = served.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                    eos_token_id=list(served.eos_ids), pad_token_id=served.tokenizer.pad_token_id)
    expected = out[0, len(prompt):].tolist()
    engine = Engine(served, max_batch=8)
    engine.start()

    async def one(sampling):
        answer = Answer()
        async for _ in engine.generate(prompt, sampling, answer):
            pass
        return answer

    async def many(sampling, k):
        return await asyncio.gather(*[one(sampling) for _ in range(k)])

    try:
        greedy = asyncio.run(many(Sampling(max_tokens=12, temperature=0.0), 4))
        sampled = asyncio.run(many(Sampling(max_tokens=12, temperature=1.5), 6))
    finally:
        engine.stop()
    text = served.tokenizer.decode(expected, skip_special_tokens=True)
    assert all(a.text == text for a in greedy), (text, [a.text for a in greedy])
    assert len({a.text for a in sampled}) > 1
