"""Report plots: each writes a readable PNG atomically, empty input included, lazily imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from congrad.reporting import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FILLED = {
    "plot_win_rate_by_round": {
        "congrad": [(1, 0.52, 0.45, 0.6), (2, 0.61, 0.55, 0.68), (3, 0.7, None, None)],
        "full": [(2, 0.55, 0.5, 0.6), (1, 0.5, 0.43, 0.57)],
    },
    "plot_language_bars": {
        "congrad": {"en": 0.7, "de": 0.65, "zh": None},
        "full": {"en": 0.6, "zh": 0.55},
    },
    "plot_keep_sweep": {"congrad": [(0.3, 0.6), (0.5, 0.66), (0.7, 0.62)], "rand": []},
    "plot_accuracy_by_round": {"congrad": [(0, 0.41), (1, 0.4), (2, 0.42)]},
    "plot_stage_seconds": {
        "congrad": {"generate": 70.0, "judge": 85.0, "score": 47.0, "train": 60.0},
        "full": {"generate": 68.0, "judge": 80.0, "train": 58.0},
    },
}
EMPTY = {
    "plot_win_rate_by_round": {},
    "plot_language_bars": {"congrad": {}},
    "plot_keep_sweep": {"congrad": []},
    "plot_accuracy_by_round": {},
    "plot_stage_seconds": {},
}


def _check_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width >= 400 and height >= 200
    assert image.std() > 0.01  # something drawn, not a blank canvas
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left


@pytest.mark.parametrize("name", sorted(FILLED))
def test_each_plot_writes_a_png(tmp_path, name):
    path = tmp_path / "figures" / f"{name}.png"
    written = getattr(plots, name)(FILLED[name], path, title=name)
    assert written == path
    _check_png(path)


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_input_says_no_data(tmp_path, name, monkeypatch):
    notes = []
    original = plots._no_data
    monkeypatch.setattr(plots, "_no_data", lambda axes: (notes.append(axes), original(axes)))
    path = getattr(plots, name)(EMPTY[name], tmp_path / "empty.png", title="nothing yet")
    assert len(notes) == 1
    assert [text.get_text() for text in notes[0].texts] == ["no data"]
    _check_png(path)


def test_rewrite_replaces_the_file(tmp_path):
    path = tmp_path / "accuracy.png"
    plots.plot_accuracy_by_round({}, path, title="first")
    before = path.read_bytes()
    plots.plot_accuracy_by_round(FILLED["plot_accuracy_by_round"], path, title="second")
    assert path.read_bytes() != before
    _check_png(path)


def test_import_does_not_load_matplotlib():
    code = "import sys, congrad.reporting.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plotting_leaves_the_pyplot_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg'); import tempfile, pathlib;"
        "import congrad.reporting.plots as p;"
        "d = pathlib.Path(tempfile.mkdtemp());"
        "p.plot_keep_sweep({'a': [(0.5, 0.6)]}, d / 'k.png', title='t');"
        "print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
