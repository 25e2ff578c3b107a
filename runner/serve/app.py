"""The HTTP side of `runner serve`: a Starlette app with OpenAI's routes. Every refusal is OpenAI's
error object (`{"error": {message, type, param, code}}`) with its status: 400 bad JSON or field,
401 wrong or missing key, 404 unknown model or route, 413 body or prompt too long, 503 overloaded
or shutting down."""
from __future__ import annotations

import contextlib
import hmac
import sys
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from runner.serve import protocol as p
from runner.serve.protocol import Answer, ApiError

MAX_BODY_BYTES = 4 * 1024 * 1024


def error_response(err: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def build_app(engine, *, api_key: str | None = None, max_pending: int = 256, banner: str | None = None) -> Starlette:
    served = engine.served
    known = {served.name: served.name}
    created = int(time.time())
    state = {"closing": False}

    def guard(request: Request) -> None:
        if api_key is not None:
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                               code="invalid_api_key")
        if state["closing"] or not engine.healthy:
            raise ApiError(503, "the server is shutting down", code="unavailable")

    async def read_json(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise _too_large()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _too_large()
        return p.parse_json(bytes(body))

    async def models(request: Request):
        guard(request)
        return JSONResponse(p.models_list(list(known), created))

    async def model(request: Request):
        guard(request)
        name = request.path_params["name"]
        if name not in known:
            raise ApiError(404, f"the model '{name}' does not exist on this server", param="model",
                           code="model_not_found")
        return JSONResponse(p.models_list([name], created)["data"][0])

    async def chat_completions(request: Request):
        guard(request)
        vision = getattr(engine, "reads_images", False)  # image parts: the vision engine's own prompt
        req = p.parse_chat(await read_json(request), known, images=vision)
        prompt_ids = engine.prompt(req.messages) if vision else _chat_prompt(served, req.messages)
        return await _answer(req, prompt_ids, chat=True)

    async def completions(request: Request):
        guard(request)
        req = p.parse_completion(await read_json(request), known)
        if getattr(engine, "reads_images", False):
            raise ApiError(400, "this server serves a vision-language model: use /v1/chat/completions",
                           param="prompt")
        prompt_ids = served.tokenizer(req.prompt)["input_ids"]
        if not prompt_ids:
            raise ApiError(400, "'prompt' is empty", param="prompt")
        return await _answer(req, prompt_ids, chat=False)

    async def _answer(req, prompt_ids: list[int], *, chat: bool):
        engine.check_prompt(prompt_ids, req.sampling)  # a 413 before any response starts
        if engine.in_flight >= max_pending:
            raise ApiError(503, f"the server is busy ({engine.in_flight} requests in flight); retry shortly",
                           code="overloaded", type_="server_error")
        rid = p.new_id("chatcmpl" if chat else "cmpl")
        answer = Answer()
        pieces = engine.generate(prompt_ids, req.sampling, answer, stream=req.stream)
        if not req.stream:
            async for _ in pieces:
                pass
            if chat:
                return JSONResponse(p.chat_response(rid, req.model, answer))
            text = req.prompt + answer.text if req.echo else answer.text
            return JSONResponse(p.completion_response(rid, req.model, Answer(text, answer.finish_reason, answer.usage)))
        return StreamingResponse(_events(rid, req, pieces, answer, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(rid, req, pieces, answer: Answer, chat: bool):
        if chat:
            yield p.sse(p.chat_chunk(rid, req.model, {"role": "assistant", "content": ""}))
        elif req.echo:
            yield p.sse(p.completion_chunk(rid, req.model, req.prompt))
        try:
            async for text in pieces:
                chunk = p.chat_chunk(rid, req.model, {"content": text}) if chat else p.completion_chunk(rid, req.model, text)
                yield p.sse(chunk)
        except ApiError as err:  # the response has started: the error travels as an event
            yield p.sse(err.body())
            yield p.sse("[DONE]")
            return
        finally:
            await pieces.aclose()
        if chat:
            yield p.sse(p.chat_chunk(rid, req.model, {}, answer.finish_reason))
        else:
            yield p.sse(p.completion_chunk(rid, req.model, "", answer.finish_reason))
        if req.include_usage:
            make = p.chat_chunk if chat else p.completion_chunk
            yield p.sse(make(rid, req.model, {} if chat else "", usage=answer.usage))
        yield p.sse("[DONE]")

    async def health(request: Request):
        status = 200 if engine.healthy and not state["closing"] else 503
        return JSONResponse({"status": "ok" if status == 200 else "unavailable"}, status_code=status)

    async def on_api_error(request: Request, err: ApiError):
        return error_response(err)

    async def on_http_error(request: Request, err: HTTPException):
        if err.status_code == 404:
            return error_response(ApiError(404, f"no route {request.method} {request.url.path}: this server has "
                                                "/v1/models, /v1/chat/completions and /v1/completions",
                                           code="not_found"))
        if err.status_code == 405:
            return error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                                           code="method_not_allowed"))
        return error_response(ApiError(err.status_code, str(err.detail)))

    async def on_error(request: Request, err: Exception):  # a bug of ours: still OpenAI's shape
        return error_response(ApiError(500, f"internal error: {type(err).__name__}", code="internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        if banner:
            print(banner, file=sys.stderr, flush=True)
        try:
            yield
        finally:
            state["closing"] = True
            engine.stop()

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: on_api_error, HTTPException: on_http_error,
                                                      Exception: on_error})
    app.state.serving = state
    return app


def _too_large() -> ApiError:
    return ApiError(413, f"the request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB",
                    code="request_too_large")


def _chat_prompt(served, messages: list[dict]) -> list[int]:
    """The conversation rendered with the run's template and training system prompt (a request's
    own system message replaces it), ending with the assistant header."""
    from jinja2 import TemplateError

    from runner.serve.generate import prompt_inputs

    try:
        inputs = prompt_inputs(served.tokenizer, messages, system=served.system_prompt, plan=served.plan)
    except TemplateError as err:
        raise ApiError(400, f"the model's chat template refused these messages: {err}", param="messages") from None
    return inputs["input_ids"][0].tolist()
