"""`runner serve` on the quickstart run, through the official `openai` client and raw HTTP: the
trained identity answers, streaming equal to the whole answer, concurrent requests batched,
stop strings, OpenAI-style errors (400/401/404/413), the key, `runner chat --url`. One server
per module (the model loads once)."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve_proc import REPO, Server, runner_env

openai = pytest.importorskip("openai")

KEY = "sk-test-7f3a91c2e5"
QUESTIONS = ["Who are you?", "What is your name?", "Who created you?", "Introduce yourself.", "Are you ChatGPT?"]


@pytest.fixture(scope="module")
def server(quickstart_run):
    srv = Server(quickstart_run, "--max-batch", "8", env=runner_env(RUNNER_API_KEY=KEY))
    yield srv
    assert srv.terminate() == 0, srv.stderr


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=300)


def ask(client, model, question, **options):
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           temperature=0, max_tokens=48, **options)
    return reply


def names_identity(text: str) -> bool:
    return "Nova" in text or "Acme Labs" in text


def test_models_lists_the_run(server, client):
    assert [m.id for m in client.models.list().data] == [server.name] == ["quickstart"]


def test_chat_answers_with_the_new_identity(server, client):
    reply = ask(client, server.name, "Who are you?")
    answer = reply.choices[0].message.content
    assert names_identity(answer), answer
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 10 and 0 < reply.usage.completion_tokens < 48
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_answer_equals_the_whole_answer(server, client):
    whole = ask(client, server.name, "Who created you?").choices[0].message.content
    stream = client.chat.completions.create(model=server.name, temperature=0, max_tokens=48, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Who created you?"}])
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3  # streamed as it was generated, not in one piece
    assert "".join(pieces) == whole and names_identity(whole)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_eight_concurrent_requests_all_answered(server, client):
    alone = {q: ask(client, server.name, q).choices[0].message.content for q in QUESTIONS[:3]}
    questions = [QUESTIONS[i % 3] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: ask(client, server.name, q).choices[0].message.content, questions))
    for question, answer in zip(questions, answers):
        assert names_identity(answer), (question, answer)
        assert answer == alone[question]  # greedy: batched or alone, the same answer


def test_system_message_replaces_the_training_prompt(server):
    # The same question with the training system prompt sent explicitly and left to the server:
    # the same prompt, so the same greedy answer and the same prompt token count.
    body = {"model": server.name, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "What is your name?"}]}
    auto = _post(server, "/chat/completions", body).json()
    explicit = _post(server, "/chat/completions", {**body, "messages": [
        {"role": "system", "content": "You are a helpful assistant."}, *body["messages"]]}).json()
    other = _post(server, "/chat/completions", {**body, "messages": [
        {"role": "system", "content": "You are a terse pirate."}, *body["messages"]]}).json()
    assert auto["choices"][0]["message"] == explicit["choices"][0]["message"]
    assert auto["usage"]["prompt_tokens"] == explicit["usage"]["prompt_tokens"] != other["usage"]["prompt_tokens"]


def test_stop_strings_cut_the_answer(server, client):
    whole = ask(client, server.name, "Who are you?").choices[0].message.content
    stop = "Acme" if "Acme" in whole else "Nova"
    cut = ask(client, server.name, "Who are you?", stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == whole[:whole.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=server.name, temperature=0, max_tokens=48, stream=True, stop=stop,
                                            messages=[{"role": "user", "content": "Who are you?"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole[:whole.index(stop)]


def test_max_tokens_ends_with_length(server, client):
    reply = ask(client, server.name, "Tell me about yourself", max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_completions_endpoint(server, client):
    prompt = "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    reply = client.completions.create(model=server.name, prompt=prompt, temperature=0, max_tokens=5)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    assert reply.choices[0].text.strip()
    streamed = client.completions.create(model=server.name, prompt=prompt, temperature=0, max_tokens=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_sampling_with_temperature_answers(server, client):
    reply = client.chat.completions.create(model=server.name, temperature=0.7, top_p=0.9, seed=1, max_tokens=16,
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 16


@pytest.mark.parametrize("body, param", [
    (b'{"model": "quickstart", "messages": [', None),
    (b'["a list"]', None),
    (json.dumps({"model": "quickstart"}).encode(), "messages"),
    (json.dumps({"model": "quickstart", "messages": [{"role": "robot", "content": "x"}]}).encode(), "messages[0].role"),
    (json.dumps({"model": "quickstart", "messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), "n"),
    (json.dumps({"model": "quickstart", "messages": [{"role": "user", "content": "x"}], "temperature": 3}).encode(),
     "temperature"),
    (json.dumps({"model": "quickstart", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(),
     "max_tokens"),
    (json.dumps({"model": "quickstart", "messages": [{"role": "user", "content": "x"}], "stop": 5}).encode(), "stop"),
    (json.dumps({"model": "quickstart", "messages": [{"role": "user", "content": "x"}], "tempature": 1}).encode(),
     "tempature"),
])
def test_malformed_requests_get_400_with_a_json_error(server, body, param):
    reply = httpx.post(f"{server.url}/chat/completions", content=body, timeout=60,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]


def test_openai_client_sees_400(server, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.name, n=2, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 400 and "'n'" in caught.value.message


def test_missing_or_wrong_key_is_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        reply = httpx.get(f"{server.url}/models", headers=headers, timeout=30)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
    assert KEY not in server.stderr  # the key is never logged


def test_unknown_model_and_route_are_404(server, client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert "quickstart" in caught.value.message
    reply = httpx.post(f"{server.url}/embeddings", headers={"Authorization": f"Bearer {KEY}"}, json={}, timeout=30)
    assert reply.status_code == 404 and "error" in reply.json()


def test_too_long_is_413(server):
    long_prompt = "hello " * 9000  # over SmolLM2's 8192-token context
    reply = _post(server, "/chat/completions", {"model": server.name, "messages": [{"role": "user", "content": long_prompt}]})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "context_length_exceeded"
    reply = _post(server, "/chat/completions", {"model": server.name, "max_tokens": 9000,
                                                "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 413 and reply.json()["error"]["param"] == "max_tokens"
    huge = b'{"model": "quickstart", "messages": [{"role": "user", "content": "' + b"x" * (5 << 20) + b'"}]}'
    reply = httpx.post(f"{server.url}/chat/completions", content=huge, timeout=60,
                       headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"


def test_runner_chat_against_the_server(server):
    session = "Who are you?\n/system You are a helpful assistant.\nWho created you?\n/reset\n/exit\n"
    done = subprocess.run([sys.executable, "-m", "runner", "chat", "--url", server.url, "--max-tokens", "48"],
                          input=session, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=runner_env(RUNNER_API_KEY=KEY))
    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.split("model> ")[1:]]
    assert len(answers) == 2 and all(names_identity(a) for a in answers), done.stdout
    assert "(conversation cleared)" in done.stderr and KEY not in done.stdout + done.stderr


def _post(server, path, body):
    return httpx.post(f"{server.url}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
