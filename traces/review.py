"""``momentbus review OUT``: a page over a run's OUT folder (finished or live).

A Starlette app served by uvicorn. The page (``review_assets/``: one Jinja2 template, our own JS
and CSS; no CDN, no external font, so it works offline) shows the source's timeline with every
trigger (rule, onset, clip window, score, missing modalities), per-component lanes of processing
time and sync delay from ``trace.jsonl``, drops and late observations; clicking a trigger plays
its clip in the page and lists its evidence. The data comes from :class:`OutFolder`
(``traces/review_data.py``), read incrementally, so a live run's page follows the files.

HTTP endpoints (JSON unless said; times are ``t_ns``, durations ms):

* ``GET /``: the page.
* ``GET /api/status``: what the folder holds and what is missing (:meth:`OutFolder.status`).
* ``GET /api/triggers?offset=0&limit=50[&at_ns=T]``: a page of triggers in event-time order
  (:meth:`OutFolder.triggers`); thousands of triggers are paged, never sent at once.
* ``GET /api/triggers/{index}``: one trigger by its line number in triggers.jsonl (404 if none).
* ``GET /api/lanes?bins=600[&t0_ns=..&t1_ns=..]``: the lanes downsampled to ``bins`` bins
  (:meth:`OutFolder.lanes`).
* ``GET /api/events``: server-sent events; an ``update`` event (data: the counters of
  :meth:`OutFolder.refresh`) whenever triggers.jsonl, trace.jsonl or clips/ changed. The files are
  polled every ``poll_interval`` seconds (0.5 s: a trigger shows up within a second; stat calls
  only while nothing changes).
* ``GET /clips/{name}``: a clip file, with HTTP range requests (206) so ``<video>`` can seek.
* ``GET /static/...``: the page's JS and CSS.

Access: with a token, every request needs it, as ``?token=T`` (the page adds it to each URL it
requests, EventSource and ``<video>`` included), ``Authorization: Bearer T`` or
``X-Momentbus-Token: T``; otherwise 401. A bind that is not loopback needs a token or
``insecure=True`` (:func:`check_bind`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (FileResponse, JSONResponse, PlainTextResponse, Response,
                                 StreamingResponse)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from .binds import BindError, is_loopback, listen, parse_bind
from .review_data import CLIP_NAME, CLIP_TYPES, OutFolder

__all__ = ["ASSETS", "ReviewError", "check_bind", "create_app", "serve"]

#: Templates and static files of the page (package data of ``momentbus.traces``).
ASSETS = Path(__file__).with_name("review_assets")
#: Nothing but our own origin: no CDN, no external font, no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'")


class ReviewError(ValueError):
    """A mistake in how the review page was asked for (printed as one line, exit 2)."""


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse a non-loopback bind without a token or ``insecure``.

    Raises:
        ReviewError: ``host`` is not loopback and neither ``token`` nor ``insecure`` was given.
    """
    if token is not None and not token:
        raise ReviewError("--token must not be empty")
    if not is_loopback(host) and not token and not insecure:
        raise ReviewError(f"binding {host} (not loopback) would show the clips to the network: "
                          "give --token T (every request then needs it) or --insecure")


class TokenGate:
    """ASGI middleware: every HTTP request must carry ``token`` (query ``token``, header
    ``Authorization: Bearer`` or ``X-Momentbus-Token``); else 401. Compared in constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _allowed(self, scope: Scope) -> bool:
        given: list[bytes] = []
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given += [v.encode() for v in query.get("token", [])]
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value.lower().startswith(b"bearer "):
                given.append(value[7:].strip())
            elif name == b"x-momentbus-token":
                given.append(value.strip())
        return any(hmac.compare_digest(g, self.token) for g in given)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(
            "momentbus review: this page needs its token: open the URL `momentbus review` "
            "printed (...?token=...)\n", status_code=401,
            headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise _BadParam(f"{name}={text!r} is not an integer") from None


class _BadParam(ValueError):
    """A query parameter that is not what the API takes (answered 400)."""


def create_app(out_dir: str | Path, *, token: str | None = None,
               poll_interval: float = 0.5, page_size: int = 50,
               stopping: Callable[[], bool] | None = None) -> Starlette:
    """The review app over ``out_dir`` (which may not exist yet; the page says so).

    Args:
        token: if given, every request must carry it (see :class:`TokenGate`).
        poll_interval: seconds between checks of the files for the live-update events.
        page_size: triggers per page in the list.
        stopping: returns True once the server shuts down: open event streams then end
            (within ``poll_interval``) so the shutdown is clean instead of cancelled.
    """
    is_stopping = stopping or (lambda: False)
    folder = OutFolder(out_dir)
    templates = Jinja2Templates(directory=str(ASSETS / "templates"))
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

    def json_response(data: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(data, status_code=status, headers=headers)

    async def page(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {
            "out": str(folder.root), "token": token or "", "page_size": page_size,
            "poll_ms": int(poll_interval * 1000)}, headers=headers)

    async def fresh(read: Callable[..., Any], *args: Any) -> Any:
        """``read(*args)`` on the folder as it is now (both off the event loop)."""
        await run_in_threadpool(folder.refresh)
        return await run_in_threadpool(read, *args)

    async def status(request: Request) -> Response:
        return json_response(await fresh(folder.status))

    async def triggers(request: Request) -> Response:
        try:
            offset = _int_param(request, "offset", 0) or 0
            limit = _int_param(request, "limit", page_size) or page_size
            at_ns = _int_param(request, "at_ns", None)
        except _BadParam as e:
            return json_response({"error": str(e)}, 400)
        return json_response(await fresh(folder.triggers, offset, limit, at_ns))

    async def one_trigger(request: Request) -> Response:
        item = await fresh(folder.trigger, request.path_params["index"])
        if item is None:
            return json_response({"error": f"no trigger #{request.path_params['index']}"}, 404)
        return json_response(item)

    async def lanes(request: Request) -> Response:
        try:
            bins = _int_param(request, "bins", 600) or 600
            t0 = _int_param(request, "t0_ns", None)
            t1 = _int_param(request, "t1_ns", None)
        except _BadParam as e:
            return json_response({"error": str(e)}, 400)
        return json_response(await fresh(folder.lanes, bins, t0, t1))

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            last: dict[str, int] | None = None
            quiet = 0.0
            yield "retry: 2000\n\n"
            while not is_stopping() and not await request.is_disconnected():
                state = await run_in_threadpool(folder.refresh)
                if state != last:
                    yield f"event: update\ndata: {json.dumps(state)}\n\n"
                    last, quiet = state, 0.0
                elif quiet >= 15:
                    yield ": keep-alive\n\n"  # proxies and browsers keep the stream open
                    quiet = 0.0
                await asyncio.sleep(poll_interval)  # file polling period, not a wait on a test
                quiet += poll_interval

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def clip(request: Request) -> Response:
        name = request.path_params["name"]
        path = folder.clips_dir / name
        if not CLIP_NAME.match(name) or path.suffix not in CLIP_TYPES:
            return PlainTextResponse(f"not a clip name: {name}\n", status_code=404)
        if not path.is_file():
            return PlainTextResponse(f"clip file clips/{name} is missing on disk\n",
                                     status_code=404)
        return FileResponse(path, media_type=CLIP_TYPES[path.suffix],
                            headers={"Cache-Control": "no-cache"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    app = Starlette(routes=[
        Route("/", page),
        Route("/healthz", healthz),
        Route("/api/status", status),
        Route("/api/triggers", triggers),
        Route("/api/triggers/{index:int}", one_trigger),
        Route("/api/lanes", lanes),
        Route("/api/events", events),
        Route("/clips/{name}", clip),
        Mount("/static", StaticFiles(directory=str(ASSETS / "static")), name="static"),
    ])
    app.state.folder = folder
    if token:
        app.add_middleware(TokenGate, token=token)
    return app


def _url(host: str, port: int, token: str | None) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")


def serve(out_dir: str | Path, bind: str = "127.0.0.1:8080", *, token: str | None = None,
          insecure: bool = False,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve the review page of ``out_dir`` on ``bind`` until SIGINT/SIGTERM (blocking).

    Once the socket listens and the app is started, ``announce`` receives the page's URL (with
    the token); by default one line ``momentbus review: serving OUT at URL`` goes to stderr,
    which is also the readiness handshake tests wait for. Port 0 binds a free port (the URL has
    the real one).

    Raises:
        BindError: a malformed bind or one that cannot be bound.
        ReviewError: a non-loopback bind without token or ``insecure``.
    """
    import uvicorn

    host, port = parse_bind(bind)
    check_bind(host, token, insecure)
    servers: list[uvicorn.Server] = []
    app = create_app(out_dir, token=token,
                     stopping=lambda: bool(servers) and servers[0].should_exit)
    sock = listen(host, port)
    real_port = sock.getsockname()[1]
    url = _url(host, real_port, token)

    def default_announce(u: str) -> None:
        print(f"momentbus review: serving {out_dir} at {u}", file=sys.stderr, flush=True)

    say = announce or default_announce

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                say(url)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1, server_header=False)
    servers.append(_Server(config))
    try:
        servers[0].run(sockets=[sock])
    finally:
        sock.close()


# errors a caller turns into one line (cli.py)
USER_ERRORS = (BindError, ReviewError)
