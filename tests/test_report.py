"""evomerge report: plots and one self-contained HTML page, checked in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import base_config

from evomerge.interface.cli import main
from evomerge.interface.report import load_run, make_report, mean_se, pareto_mask

PNG = b"\x89PNG\r\n\x1a\n"


CELLS = 4
MAP_ELITES = {"name": "map_elites", "descriptors": ["even", "odd"], "cells": CELLS}
PARETO = {"name": "pareto", "objectives": ["0-4", "5-9"], "archive_size": 6}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short real searches of the same config (seeds 0 and 1), one GA run, and real
    MAP-Elites (a 4 x 4 grid over the even / odd digits) and Pareto runs."""
    import yaml

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, strategy, extra in (
        ("m2n2-s0", None, []),
        ("m2n2-s1", None, ["--set", "seed=1"]),
        ("ga-s0", None, ["--set", "strategy.name=ga"]),
        ("map-elites", MAP_ELITES, []),
        ("pareto", PARETO, []),
    ):
        cfg = base_config(name=name.split("-")[0], budget={"evaluations": 150})
        if strategy is not None:
            cfg["strategy"] = {**strategy, "mutation_std": 0.01}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["run", str(path), "--out", str(root / name), "-q", *extra]) == 0
        out[name] = root / name
    return out


def test_one_run_gives_every_plot_it_has_data_for(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs["m2n2-s0"]), "--out", str(out)]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    for name in ("fitness.png", "metrics.png", "archive.png"):
        assert (out / name).read_bytes().startswith(PNG), name
    page = (out / "index.html").read_text()
    pngs = sorted(out.glob("*.png"))
    # every PNG is embedded too, so the one page opens offline
    assert page.count('src="data:image/png;base64,') == len(pngs) >= 3
    recorded = json.loads((runs["m2n2-s0"] / "history.jsonl").read_text().splitlines()[-1])
    assert (out / "diversity.png").exists() == ("diversity" in recorded)
    assert 'id="summary"' in page and "test_accuracy" in page
    # no MAP-Elites, Pareto or diversity data in this run: skipped, and the page says why
    for name in ("map_elites.png", "pareto.png"):
        assert not (out / name).exists()
    assert "not a MAP-Elites run" in page and "not a Pareto run" in page


def test_default_out_is_the_run_directory(runs):
    done = make_report([runs["ga-s0"]])
    assert done["html"] == runs["ga-s0"] / "report" / "index.html"
    assert done["html"].is_file()


def test_mean_and_standard_error_over_runs():
    a = (np.array([0.0, 10.0, 20.0]), np.array([0.0, 1.0, 2.0]))
    b = (np.array([0.0, 5.0, 15.0]), np.array([2.0, 3.0, 4.0]))
    grid, mean, se = mean_se([a, b])
    assert grid.tolist() == [0.0, 5.0, 10.0, 15.0]  # only where both runs have data
    ya = np.interp(grid, *a)
    yb = np.interp(grid, *b)
    assert np.allclose(mean, (ya + yb) / 2)
    assert np.allclose(se, np.abs(ya - yb) / 2)  # std (ddof 1) / sqrt(2) for two runs


def test_pareto_mask():
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4], [1.0, 0.0]])
    assert pareto_mask(pts).tolist() == [True, True, True, False, True]


def test_several_runs_are_grouped_with_bands(runs, tmp_path):
    out = tmp_path / "cmp"
    done = make_report([runs["m2n2-s0"], runs["m2n2-s1"], runs["ga-s0"]], out)
    names = {p.name for p in done["images"]}
    assert {"fitness.png", "metrics.png", "archive-1.png", "archive-3.png"} <= names
    page = (out / "index.html").read_text()
    assert page.count("<tr>") == 1 + 3  # header + one row per run
    assert "ga-s0" in page and "m2n2-s1" in page


def test_map_elites_pareto_and_diversity_of_real_runs(runs, tmp_path):
    done = make_report([runs["map-elites"], runs["pareto"]], tmp_path / "out")
    names = {p.name for p in done["images"]}
    assert {"map_elites.png", "pareto.png", "diversity.png"} <= names
    assert not any("MAP-Elites" in n or "Pareto" in n for n in done["notes"])
    assert (tmp_path / "out" / "map_elites.png").read_bytes().startswith(PNG)


def test_the_map_elites_plot_s_grid_is_the_archive_placed_by_descriptor(runs):
    """The grid drawn is the checkpointed archive: rows x columns = even x odd accuracy cells,
    each filled cell the mean score of the elite whose descriptors fall in it, NaN where empty,
    and its filled fraction the coverage the history recorded at the same evaluation."""
    from conftest import DIGITS

    from evomerge.core.plugins import load_object
    from evomerge.interface.report_plots import map_elites_grid
    from evomerge.search.niche_archives import MapElitesConfig
    from evomerge.search.registry import make_strategy

    run = load_run(runs["map-elites"])
    grid = map_elites_grid(run)
    assert grid.shape == (CELLS, CELLS)
    ids, scores = run.checkpoint.tensors["ids"], run.checkpoint.tensors["scores"].double()
    filled = (ids >= 0).numpy().reshape(CELLS, CELLS)
    assert np.array_equal(~np.isnan(grid), filled)
    assert 2 <= filled.sum() < CELLS * CELLS
    assert np.array_equal(grid[filled], scores.mean(dim=1).numpy().reshape(CELLS, CELLS)[filled])
    assert filled.any(axis=1).sum() >= 2 and filled.any(axis=0).sum() >= 2  # both axes used

    plugin = load_object(DIGITS)()
    plugin.setup(torch.device("cpu"))
    strategy = make_strategy(MapElitesConfig(**MAP_ELITES), 0, plugin.example_groups())
    for slot in np.flatnonzero(filled.reshape(-1)):
        even, odd = strategy.archive.groups.scores(scores[slot]).tolist()
        row, col = divmod(int(slot), CELLS)
        assert row == min(int(even * CELLS), CELLS - 1) and col == min(int(odd * CELLS), CELLS - 1)

    last = run.history[-1]
    assert last["evaluations"] == run.checkpoint.meta["evaluations"] == 150
    assert last["coverage"] == pytest.approx(filled.mean())
    assert last["qd_score"] == pytest.approx(float(np.nansum(grid)))


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const table = document.querySelector("table#summary");
  const result = {
    images: images.length,
    loaded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    widths: images.map((i) => i.naturalWidth),
    table: table !== null,
    rows: table ? table.querySelectorAll("tbody tr").length : 0,
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def test_html_opens_in_headless_chromium(runs, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("chromium not found (Debian: apt-get install -y chromium; .ci/run does it)")
    out = tmp_path / "report"
    make_report([runs["m2n2-s0"], runs["map-elites"], runs["pareto"]], out)
    page = (out / "index.html").read_text()
    probe = out / "probe.html"  # the same page plus a script that reports what it sees
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe result; chromium said: {done.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["images"] >= 7  # fitness, metrics, 3 archives, diversity, MAP-Elites, Pareto
    assert result["loaded"] == result["images"], result
    assert all(w > 0 for w in result["widths"])
    assert result["table"] and result["rows"] == 3
