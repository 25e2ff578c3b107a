"""`runner chat RUN_DIR` / `runner chat --url URL`: a terminal chat that prints the answer as it is
generated and keeps the conversation. In-process it loads the run (its template and training system
prompt, as `runner generate`) and streams with transformers' TextIteratorStreamer; with --url it
talks to `runner serve` (or any OpenAI-compatible server) and streams its SSE chunks.

Commands: /reset (forget the conversation), /system TEXT (a system prompt of your own; /system
alone goes back to the default), /exit (or Ctrl-D)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from runner.errors import UserError

HELP = "chat with the model; /reset forgets the conversation, /system TEXT sets a system prompt, /exit leaves"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default=None, help="a run directory or model folder (in-process)")
    parser.add_argument("--url", default=None, help="a runner serve address, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=None, help="the server's key (default: $RUNNER_API_KEY)")
    parser.add_argument("--model", default=None, help="model name on the server (default: the first it lists)")
    parser.add_argument("--system", default=None, help="system prompt (default: the training template's)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)


def run(args) -> int:
    if (args.path is None) == (args.url is None):
        raise UserError("give either a run directory (in-process) or --url (a running server), not both",
                        where="runner chat", hint="runner chat outputs/quickstart   or   runner chat --url http://127.0.0.1:8000/v1")
    options = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p)
    if args.url:
        answer = RemoteChat(args.url, args.api_key or os.environ.get("RUNNER_API_KEY"), args.model, **options)
    else:
        answer = LocalChat(args.path, getattr(args, "debug", False), **options)
    return loop(answer, args.system)


def loop(answer, system: str | None) -> int:
    print(HELP, file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text == "/system" or text.startswith("/system "):
            system = text[len("/system"):].strip() or None
            print(f"(system prompt: {system!r})" if system else "(system prompt: the default)", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"(unknown command {text.split()[0]}; {HELP})", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        print("model> ", end="", flush=True)
        pieces = []
        for piece in answer(messages):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(pieces).strip()})


class LocalChat:
    """The model in this process, streamed token by token."""

    def __init__(self, path, debug: bool, *, max_tokens: int, temperature: float, top_p: float):
        from runner.quiet import quiet_for_run_dir
        from runner.serve.engine import load_served

        quiet_for_run_dir(path, debug)
        self.served = load_served(path)
        self.options = dict(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)

    def __call__(self, messages: list[dict]):
        import torch
        from transformers import TextIteratorStreamer

        from runner.serve.generate import prompt_inputs

        s = self.served
        inputs = prompt_inputs(s.tokenizer, messages, system=s.system_prompt, plan=s.plan)
        inputs = {k: v.to(s.model.device) for k, v in inputs.items()}
        streamer = TextIteratorStreamer(s.tokenizer, skip_prompt=True, skip_special_tokens=True)
        t = self.options["temperature"]
        sampling = {"do_sample": True, "temperature": t, "top_p": self.options["top_p"]} if t > 0 else {"do_sample": False}
        errors = []

        def work():
            try:
                with torch.inference_mode():
                    s.model.generate(**inputs, max_new_tokens=self.options["max_new_tokens"], streamer=streamer,
                                     pad_token_id=s.tokenizer.pad_token_id, eos_token_id=list(s.eos_ids), **sampling)
            except Exception as err:  # shown after the partial answer, the conversation goes on
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            yield f"\n(error: {errors[0]})"


class RemoteChat:
    """A runner serve (or other OpenAI-compatible) server, streamed by its SSE chunks."""

    def __init__(self, url: str, api_key: str | None, model: str | None, *, max_tokens: int, temperature: float,
                 top_p: float):
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(600.0, connect=10.0))
        self.options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        import httpx

        try:
            reply = self.client.get(f"{self.base}/models")
        except httpx.HTTPError as err:
            raise UserError(f"cannot reach {self.base}: {err}", where="runner chat --url",
                            hint="start the server first: runner serve RUN_DIR") from None
        body = _json_or_error(reply)
        if not body.get("data"):
            raise UserError(f"{self.base}/models lists no model", where="runner chat --url")
        return body["data"][0]["id"]

    def __call__(self, messages: list[dict]):
        body = {"model": self.model, "messages": messages, "stream": True, **self.options}
        with self.client.stream("POST", f"{self.base}/chat/completions", json=body) as reply:
            if reply.status_code != 200:
                reply.read()
                yield f"(error: {_error_text(reply)})"
                return
            for line in reply.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    yield f"\n(error: {chunk['error'].get('message')})"
                    return
                for choice in chunk.get("choices", []):
                    text = choice.get("delta", {}).get("content")
                    if text:
                        yield text


def _json_or_error(reply) -> dict:
    if reply.status_code != 200:
        raise UserError(f"the server answered {reply.status_code}: {_error_text(reply)}", where="runner chat --url",
                        hint="check --url and --api-key (or RUNNER_API_KEY)")
    return reply.json()


def _error_text(reply) -> str:
    try:
        return reply.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return reply.text[:200]
