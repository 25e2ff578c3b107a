"""`runner serve RUN_DIR|MODEL_DIR`: an OpenAI-compatible HTTP server for a trained run (its
template and training system prompt) or any Hugging Face model folder. Binds 127.0.0.1 unless told
otherwise, and refuses another address without an API key. SIGTERM or Ctrl-C: in-flight requests
finish (up to --grace seconds, then they are cancelled), exit 0."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from runner.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
KEY_ENV = "RUNNER_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a run directory, its merged/ folder, or a Hugging Face model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a key)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' (default: ${KEY_ENV}; prefer the variable: a "
                             "command line is visible to other users)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="most requests decoded together (default: the engine's choice on a GPU, 8 on a CPU)")
    parser.add_argument("--max-pending", type=int, default=256, help="requests in flight before answering 503")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling generator, once at start")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="weights dtype (default: the run's, or the folder's)")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds in-flight requests get after SIGTERM")


def check_bind(host: str, api_key: str | None) -> None:
    if host not in LOCAL_HOSTS and not api_key:
        raise UserError(f"--host {host} would expose the model to the network without an API key",
                        where="runner serve --host",
                        hint=f"set {KEY_ENV}=... (or --api-key), or keep the default --host 127.0.0.1")


def run(args) -> int:
    api_key = args.api_key or os.environ.get(KEY_ENV) or None
    check_bind(args.host, api_key)
    if args.max_batch is not None and args.max_batch < 1:
        raise UserError("--max-batch must be at least 1", where="runner serve --max-batch")
    sock = _bind(args.host, args.port)
    signal.signal(signal.SIGTERM, _stop_while_loading)

    from runner.quiet import quiet_for_run_dir

    quiet_for_run_dir(args.path, getattr(args, "debug", False))
    import uvicorn

    from runner.serve.app import build_app
    from runner.serve.engine import Engine, load_served

    served = load_served(args.path, dtype=args.dtype)
    max_batch = args.max_batch or (8 if served.model.device.type == "cpu" else None)
    from runner.serve.vision_generate import is_vision_run

    if is_vision_run(args.path):  # image content parts through generate, one request at a time
        from runner.serve.vision_engine import VisionEngine
        from runner.serve.vision_generate import load_processor

        engine = VisionEngine(served, load_processor(args.path))
    else:
        engine = Engine(served, max_batch=max_batch, seed=args.seed)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    banner = (f"serving {served.name} at http://{shown}:{port}/v1 "
              f"({'API key required' if api_key else 'no API key'}; Ctrl-C stops)")
    app = build_app(engine, api_key=api_key, max_pending=args.max_pending, banner=banner)
    config = uvicorn.Config(app, log_level="debug" if args.debug else "warning", access_log=bool(args.debug),
                            timeout_graceful_shutdown=args.grace, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal into the handler
    # that was installed before it: ours, so a requested stop ends with exit 0, not a signal death.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    if not server.started:
        return 1
    print("server stopped", file=sys.stderr)
    return 0


def _stop_while_loading(signum, frame):
    raise SystemExit(0)  # nothing served yet: a stop asked for is a clean exit


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, made before the model loads: a port in use is reported at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}", where="runner serve --host/--port",
                        hint="pick another --port (0 takes a free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
