"""`harness view STORE`: a read-only local web viewer of a results store (grid, cells, samples, comparisons,
plots). Needs the `view` extra (FastAPI, uvicorn, Jinja2)."""

from harness.view.app import create_app, serve
from harness.view.data import StoreView

__all__ = ["StoreView", "create_app", "serve"]
