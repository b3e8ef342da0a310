"""The web app of `harness view`: Starlette routes (through FastAPI) rendering Jinja2 templates from `StoreView`.

Read-only: every route is a GET; the store is opened read-only per request. It binds 127.0.0.1 only and serves
nothing but its store's pages, the report's plots and its own static files (no CDN: the page loads nothing from
outside).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from harness.analyze.render import fmt, fmt_num, fmt_p
from harness.errors import UserError
from harness.view.data import PLOT_SUFFIXES, StoreView

HERE = Path(__file__).parent
HOST = "127.0.0.1"


def create_app(view: StoreView) -> FastAPI:
    """The FastAPI app serving `view`'s store."""
    app = FastAPI(title="harness view", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals |= {"store_url": view.display_url, "fmt": fmt, "fmt_num": fmt_num, "fmt_p": fmt_p}
    tmp = tempfile.TemporaryDirectory(prefix="harness-view-")
    app.state.tmp = tmp  # removed when the app is collected

    def page(request: Request, name: str, ctx: dict[str, Any]) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx)

    def not_found(e: UserError) -> HTTPException:
        return HTTPException(404, str(e))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> HTMLResponse:
        return templates.TemplateResponse(request, "error.html", {"status": exc.status_code, "detail": exc.detail},
                                          status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    def grid(request: Request, task: str = "", arm: str = "", knob: str = "", errors: str = "") -> HTMLResponse:
        g = view.grid(task, arm, knob, errors)
        return page(request, "grid.html", {"g": g, "f": {"task": task, "arm": arm, "knob": knob, "errors": errors}})

    @app.get("/cell", response_class=HTMLResponse)
    def cell(request: Request, id: str, q: str = "", status: str = "") -> HTMLResponse:
        try:
            return page(request, "cell.html", view.cell(id, q, status))
        except UserError as e:
            raise not_found(e) from e

    @app.get("/sample", response_class=HTMLResponse)
    def sample(request: Request, cell: str, id: str) -> HTMLResponse:
        try:
            return page(request, "sample.html", view.sample(cell, id))
        except UserError as e:
            raise not_found(e) from e

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, a: str = "", b: str = "") -> Response:
        if not a or not b:
            return RedirectResponse("/")
        try:
            return page(request, "compare.html", view.compare(a, b))
        except UserError as e:
            raise not_found(e) from e

    @app.get("/plots", response_class=HTMLResponse)
    def plots(request: Request, render: int = 0) -> HTMLResponse:
        if render and view.plot_dir() is None:
            view.render_plots(Path(tmp.name))
        ctx = {"plots": view.plots(), "folder": view.plot_dir(), "rendered": view.rendered is not None}
        return page(request, "plots.html", ctx)

    @app.get("/plots/file/{name}")
    def plot_file(name: str) -> FileResponse:
        d = view.plot_dir()
        if d is None or "/" in name or "\\" in name or Path(name).suffix not in PLOT_SUFFIXES:
            raise HTTPException(404, f"no plot {name!r}")
        if name not in view.plots():
            raise HTTPException(404, f"no plot {name!r}")
        return FileResponse(d / name)

    return app


def serve(url: str, port: int = 8765, report_dir: str | None = None, open_browser: bool = True) -> None:
    """Serve the store at `url` on http://127.0.0.1:`port`/ until Ctrl-C (port 0: a free one); prints the URL.

    A bad store path or URL, or a port in use, raises UserError before anything is served.
    """
    import socket

    import uvicorn

    view = StoreView(url, report_dir)
    app = create_app(view)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {HOST}:{port}: {e.strerror}; choose another --port") from e
    address = f"http://{HOST}:{sock.getsockname()[1]}/"
    print(f"harness view: {view.display_url} at {address}  (read-only; Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(address)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
