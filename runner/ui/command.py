"""`runner ui [--workspace DIR] [--host 127.0.0.1] [--port N]`: the web app over a workspace folder.
Binds 127.0.0.1; any other address needs a token (--token or $RUNNER_UI_TOKEN; printed in the URL)."""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from pathlib import Path

from runner.errors import UserError

TOKEN_ENV = "RUNNER_UI_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the folder whose configs and runs the UI shows (default .)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: a free one, printed)")
    parser.add_argument("--token", default=None,
                        help=f"require this token (default: ${TOKEN_ENV}; off localhost one is made when unset)")


def run(args) -> int:
    from runner.serve.command import LOCAL_HOSTS, _bind

    workspace = Path(args.workspace).expanduser()
    if not workspace.is_dir():
        raise UserError(f"--workspace {args.workspace} is not a folder", where="runner ui --workspace",
                        hint="create it, or pass the folder that holds your configs")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    made = args.host not in LOCAL_HOSTS and token is None
    if made:
        token = secrets.token_urlsafe(24)  # off localhost a token is not optional: make one, show it once
    sock = _bind(args.host, args.port)
    import uvicorn

    from runner.ui.app import build_app

    os.chdir(workspace)  # the CLI's messages name files relative to where it runs: the workspace
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    hosts = {f"{shown}:{port}"} | ({f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
                                   if args.host in LOCAL_HOSTS else set())
    app = build_app(Path.cwd(), hosts=hosts, token=token, debug=bool(getattr(args, "debug", False)))
    # A token the user chose is never printed back; one made here has to be shown to be usable.
    url = f"http://{shown}:{port}/" + (f"?token={token}" if made else "")
    if token and not made:
        url += f" (send the token from --token / ${TOKEN_ENV}: ?token=..., a cookie or Authorization: Bearer)"
    print(f"runner ui at {url} (workspace {Path.cwd()}; Ctrl-C stops)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="debug" if args.debug else "warning", access_log=bool(args.debug),
                            timeout_graceful_shutdown=5, lifespan="on")
    server = uvicorn.Server(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    return 0
