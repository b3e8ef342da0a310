"""Deep-Research mode, more: readable frontier-plot labels, the judge role in a research run, and OpenAI tool calls
as the planning protocol (against the real llama-cpp-python server).

Model tests use real small models (smollm2-135m in float32); fakes are named in each test's docstring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.analyze.research import frontier_plot, label_boxes

# ---------------------------------------------------------------- frontier plot labels (pure)


def _overlaps(ll: np.ndarray, sizes: np.ndarray) -> list[tuple[int, int]]:
    out = []
    for i in range(len(ll)):
        for j in range(i + 1, len(ll)):
            a0, a1, b0, b1 = ll[i], ll[i] + sizes[i], ll[j], ll[j] + sizes[j]
            if a0[0] < b1[0] and b0[0] < a1[0] and a0[1] < b1[1] and b0[1] < a1[1]:
                out.append((i, j))
    return out


def test_labels_of_coincident_points_do_not_overlap():
    """Three cells sharing one cost and accuracy (as smollm2, 0.5b and predictor-only did) and a near neighbour:
    every label box is apart from every other, and the placement is deterministic."""
    anchors = np.array([[100.0, 50.0], [100.0, 50.0], [100.0, 50.0], [103.0, 52.0], [300.0, 200.0]])
    sizes = np.array([[60.0, 10.0], [80.0, 10.0], [55.0, 10.0], [40.0, 10.0], [30.0, 10.0]])
    ll = label_boxes(anchors, sizes)
    assert _overlaps(ll, sizes) == []
    assert np.array_equal(ll, label_boxes(anchors, sizes))
    assert np.allclose(ll[4], anchors[4] + 4.0)  # a lone point keeps the plain offset
    near_top = label_boxes(anchors, sizes, bounds=(0.0, 0.0, 400.0, 75.0))  # the axes end just above the points
    assert _overlaps(near_top, sizes) == [] and (near_top[:4, 1] + sizes[:4, 1] <= 75.0).all()
    right = label_boxes(anchors[:3], sizes[:3], bounds=(0.0, 0.0, 150.0, 400.0))  # no room on the right: left
    assert _overlaps(right, sizes[:3]) == [] and (right[:, 0] + sizes[:3, 0] <= 100.0).all()


def test_frontier_plot_labels_of_coincident_cells_do_not_overlap(tmp_path: Path):
    """The rendered plot: the label boxes of three cells at one point do not overlap in either panel."""
    rows = [dict(arm=arm, compressor=comp, accuracy=1 / 3, acc_lo=0.0, acc_hi=0.8, samples=3, predictor_dollars=0.006,
                 predictor_flops=1.5e11, compressor_flops=None)
            for arm, comp in (("compressor-predictor", "gguf/smollm2-135m"),
                              ("compressor-predictor", "gguf/qwen2.5-coder-0.5b"), ("predictor-only", None))]
    import matplotlib.figure

    seen = []
    orig = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **kw):  # measure the labels as drawn, then save as usual
        r = fig.canvas.get_renderer()
        for ax in fig.axes:
            seen.append([t.get_window_extent(r) for t in ax.texts if t.get_text()])
        return orig(fig, *a, **kw)

    matplotlib.figure.Figure.savefig = spy
    try:
        files = frontier_plot(pd.DataFrame(rows), tmp_path / "f.png")
    finally:
        matplotlib.figure.Figure.savefig = orig
    assert files and files[0].stat().st_size > 0
    assert seen and all(len(b) == 3 for b in seen)
    for boxes in seen:
        ll = np.array([[b.x0, b.y0] for b in boxes])
        sz = np.array([[b.width, b.height] for b in boxes])
        assert _overlaps(ll, sz) == []
