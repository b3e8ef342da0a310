"""harness: evaluate compressor–predictor LLM systems (accuracy, cost, mutual information).

The Python API (`harness.api`, imported on first use so the CLI stays light):

    import harness
    res = harness.evaluate("my.yaml")       # run one config; res.cells / res.samples / res.mi are DataFrames
    res = harness.sweep("sweep.yaml")       # run or resume a grid of cells
    res = harness.load("results/store.db")  # read a results store back
    harness.report(store), harness.compare(store, cell_a, cell_b), harness.estimate_mi(logp)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ConfigLike",
    "MIEstimate",
    "Results",
    "__version__",
    "compare",
    "estimate_mi",
    "evaluate",
    "load",
    "report",
    "sweep",
]

if TYPE_CHECKING:
    from harness.api import ConfigLike, MIEstimate, Results, compare, estimate_mi, evaluate, load, report, sweep


def __getattr__(name: str) -> Any:
    """Import the API lazily (pandas and the pipeline load only when it is used)."""
    if name in __all__:
        from harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
