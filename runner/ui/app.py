"""The UI's HTTP side (Starlette). Every refusal is JSON `{"error": {message, where, hint}}` with a 4xx.

Security: the server answers only requests whose Host is the address it was bound to (no DNS
rebinding); a token, when set (required off localhost), is needed by every request (a `?token=`
link sets an HttpOnly cookie); every state-changing request carries the page's CSRF value in a
header, which another site's page cannot read, and a foreign Origin is refused. Paths in requests
go through `Workspace.path` (runner.config.paths.confine)."""
from __future__ import annotations

import contextlib
import hmac
import json
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from runner.errors import ConfigErrors, UserError
from runner.ui import actions, configure
from runner.ui.chat import Chats, parse_messages, stream_answer
from runner.ui.jobs import Jobs
from runner.ui.workspace import Workspace, metrics_rows, recipes

STATIC = Path(__file__).parent / "static"
MAX_BODY = 2 * 1024 * 1024
COOKIE = "runner_ui_token"
CSRF_HEADER = "x-runner-csrf"


class Refused(Exception):
    def __init__(self, status: int, message: str, hint: str | None = None):
        self.status, self.message, self.hint = status, message, hint


def build_app(workspace, *, hosts: set[str], token: str | None = None, debug: bool = False) -> Starlette:
    ws = Workspace(workspace)
    jobs = Jobs(ws)
    chats = Chats(debug)
    csrf = secrets.token_urlsafe(32)

    def check(request: Request, changes: bool = False) -> None:
        host = request.headers.get("host", "")
        if host not in hosts:
            raise Refused(403, f"Host {host!r} is not this server's address", "open the URL runner ui printed")
        if token is not None:
            given = request.cookies.get(COOKIE) or request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise Refused(401, "missing or wrong token", "open the URL with ?token=... that runner ui printed")
        if changes:
            origin = request.headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != host:
                raise Refused(403, f"a request from {origin} may not change anything here")
            if not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), csrf.encode()):
                raise Refused(403, "missing or wrong CSRF header", f"send the page's {CSRF_HEADER} value")

    async def body(request: Request) -> dict:
        check(request, changes=True)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise Refused(413, f"the request body is larger than {MAX_BODY // 2**20} MiB")
        try:
            data = json.loads(bytes(raw) or b"{}")
        except ValueError:
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise Refused(400, "the body is a JSON object")
        return data

    def get(handler):
        async def endpoint(request: Request):
            check(request)
            return JSONResponse(await run_in_threadpool(handler, request.query_params))
        return endpoint

    def post(handler):
        async def endpoint(request: Request):
            data = await body(request)
            return JSONResponse(await run_in_threadpool(handler, data))
        return endpoint

    async def index(request: Request):
        given = request.query_params.get("token")
        if token is not None and given is not None and hmac.compare_digest(given.encode(), token.encode()):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        check(request)
        page = (STATIC / "index.html").read_text().replace("{{CSRF}}", csrf).replace("{{WORKSPACE}}", ws.root.name)
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; style-src 'self'; "
                                                                     "img-src 'self' data:; frame-ancestors 'none'"})

    async def static_guard(request: Request):
        check(request)
        return None

    def schema(q):
        from runner.config.schema import load_schema
        return load_schema()

    def metrics(q):
        from runner.ui.workspace import run_status, total_steps

        run_dir = ws.path(q.get("run"), "run")
        job = jobs.for_run(ws.rel(run_dir))
        after = int(q.get("after", 0) or 0)
        if not (run_dir / ".runner-run").is_file():  # a launch that has not claimed its folder (or never will)
            if job is None:
                actions.run_directory(ws, q.get("run"))  # the usual refusal
            return {"rows": [], "status": "starting" if job.running else "failed", "total_steps": None,
                    "job": job.summary(), "log": jobs.log_tail(job, 8000)}
        return {"rows": metrics_rows(run_dir, after), "status": run_status(run_dir, job),
                "total_steps": total_steps(run_dir),
                "job": job.summary() if job else None, "log": jobs.log_tail(job, 8000) if job else ""}

    def stop(data):
        run = ws.rel(actions.run_directory(ws, data.get("run")))
        job = jobs.for_run(run)
        if job is None or not job.running:
            raise UserError(f"{run} has no command running from this UI")
        jobs.stop(job)
        return {"stopped": job.id}

    def job_log(q):
        job = jobs.get(q.get("job"))
        return {"job": job.summary(), "log": jobs.log_tail(job)}

    def set_value(data):
        key = data.get("key")
        if not isinstance(key, str) or not key:
            raise UserError("key: a dotted config key")
        from runner.ui.yamledit import set_value as edit
        return {"text": edit(configure.check_text(data.get("text")), tuple(key.split(".")), data.get("value"))}

    async def chat(request: Request):
        data = await body(request)
        run_dir = actions.run_directory(ws, data.get("run"))
        messages, temperature, max_tokens = parse_messages(data)
        engine = await run_in_threadpool(chats.engine_for, run_dir, bool(data.get("base")))

        async def pieces():
            try:
                async for piece in stream_answer(engine, messages, temperature, max_tokens):
                    yield piece
            except Exception as err:  # the answer has started: the error travels in the text
                yield f"\n[error: {err}]"
        return StreamingResponse(pieces(), media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def on_refused(request: Request, err: Refused):
        return JSONResponse({"error": {"message": err.message, "where": f"{request.method} {request.url.path}",
                                       "hint": err.hint}}, status_code=err.status)

    async def on_user_error(request: Request, err: UserError):
        if isinstance(err, ConfigErrors):
            errors = [{"message": e.message, "where": e.where, "hint": e.hint} for e in err.errors]
            return JSONResponse({"error": {**errors[0], "all": errors}}, status_code=400)
        return JSONResponse({"error": {"message": err.message, "where": err.where or f"{request.method} "
                                       f"{request.url.path}", "hint": err.hint}}, status_code=400)

    async def on_http(request: Request, err: HTTPException):
        return JSONResponse({"error": {"message": str(err.detail), "where": f"{request.method} {request.url.path}",
                                       "hint": None}}, status_code=err.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            chats.close()
            jobs.stop_all()

    q = lambda f: get(lambda params: f(params))  # noqa: E731
    routes = [
        Route("/", index),
        Route("/api/schema", q(schema)),
        Route("/api/recipes", q(lambda p: recipes())),
        Route("/api/configs", q(lambda p: ws.configs())),
        Route("/api/file", q(lambda p: configure.read(ws, p.get("path")))),
        Route("/api/runs", q(lambda p: actions.list_runs(ws, jobs))),
        Route("/api/run", q(lambda p: actions.run_detail(ws, jobs, p.get("run")))),
        Route("/api/metrics", q(metrics)),
        Route("/api/compare", q(lambda p: actions.compare(ws, p.getlist("runs")))),
        Route("/api/sweeps", q(lambda p: ws.sweeps())),
        Route("/api/jobs", q(lambda p: [j.summary() for j in jobs.jobs.values()])),
        Route("/api/log", q(job_log)),
        Route("/api/recipes/use", post(lambda d: configure.use_recipe(ws, d.get("name"))), methods=["POST"]),
        Route("/api/save", post(lambda d: configure.save(ws, d.get("path"), d.get("text"))), methods=["POST"]),
        Route("/api/lint", post(lambda d: configure.lint_text(ws, d.get("path"), d.get("text"), bool(d.get("deep")))),
              methods=["POST"]),
        Route("/api/values", post(lambda d: configure.read_values(ws, d.get("path"), d.get("text"))), methods=["POST"]),
        Route("/api/set", post(set_value), methods=["POST"]),
        Route("/api/import", post(lambda d: configure.import_upload(ws, d.get("tool"), d.get("filename"),
                                                                    d.get("text"))), methods=["POST"]),
        Route("/api/train", post(lambda d: actions.start_train(
            ws, jobs, d.get("config"), smoke=bool(d.get("smoke")), overwrite=bool(d.get("overwrite")),
            launch=bool(d.get("launch"))).summary()), methods=["POST"]),
        Route("/api/stop", post(stop), methods=["POST"]),
        Route("/api/resume", post(lambda d: actions.resume(ws, jobs, d.get("run")).summary()), methods=["POST"]),
        Route("/api/eval", post(lambda d: actions.start_eval(ws, jobs, d.get("run"), d.get("tasks"),
                                                             d.get("limit")).summary()), methods=["POST"]),
        Route("/api/predict", post(lambda d: actions.start_predict(ws, jobs, d.get("run"), d.get("data"),
                                                                   d.get("limit")).summary()), methods=["POST"]),
        Route("/api/export", post(lambda d: actions.start_export(
            ws, jobs, d.get("run"), d.get("kind"), out=d.get("out"), quant=d.get("quant"), repo=d.get("repo"),
            dry_run=d.get("dry_run", True) is not False).summary()), methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Mount("/static", app=_Guarded(StaticFiles(directory=STATIC), static_guard)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={Refused: on_refused, UserError: on_user_error, HTTPException: on_http})
    app.state.jobs, app.state.workspace = jobs, ws
    return app


class _Guarded:
    """Static files behind the same Host and token check as the API."""

    def __init__(self, app, guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            request = Request(scope, receive)
            try:
                await self.guard(request)
            except Refused as err:
                response = Response(json.dumps({"error": {"message": err.message, "hint": err.hint}}),
                                    status_code=err.status, media_type="application/json")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
