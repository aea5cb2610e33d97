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
from evomerge.interface.report import make_report, mean_se, pareto_mask
from evomerge.run import checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short real searches of the same config (seeds 0 and 1) and one GA run."""
    import yaml

    root = tmp_path_factory.mktemp("runs")
    cfg = root / "digits.yaml"
    cfg.write_text(yaml.safe_dump(base_config(name="digits", **{"budget": {"evaluations": 150}})))
    out = {}
    for name, extra in (
        ("m2n2-s0", []),
        ("m2n2-s1", ["--set", "seed=1"]),
        ("ga-s0", ["--set", "strategy.name=ga"]),
    ):
        assert main(["run", str(cfg), "--out", str(root / name), "-q", *extra]) == 0
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


def _qd_run(src, dst):
    """A copy of a real run whose records and checkpoint carry MAP-Elites / Pareto / diversity
    data, as the strategies that write them do: the report must draw them from the keys."""
    shutil.copytree(src, dst)
    lines = (dst / "history.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    for i, rec in enumerate(recs):
        rec["coverage"] = min(1.0, 0.1 * (i + 1))
        rec["qd_score"] = 3.0 * i
        rec["front_size"] = 2 + i
        rec["diversity"] = {"disagreement": 0.3 - 0.01 * i, "occupancy": 0.9, "owners": 5 + i}
    (dst / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    last = checkpoint.load_latest(dst / "checkpoints")
    grid = torch.full((4, 5), float("nan"))
    grid[0, :3] = torch.tensor([0.2, 0.5, 0.7])
    grid[2, 4] = 0.9
    tensors = {
        **last.tensors,
        "grid_fitness": grid,
        "objectives": torch.rand(8, 2, generator=torch.Generator().manual_seed(0)),
    }
    meta = {k: v for k, v in last.meta.items() if k != "format"}
    meta["evaluations"] = meta["evaluations"] + 1
    meta["objective_names"] = ["task_a", "task_b"]
    checkpoint.save(dst / "checkpoints", tensors, meta, keep_last=5)
    return dst


def test_map_elites_pareto_and_diversity_when_present(runs, tmp_path):
    run = _qd_run(runs["m2n2-s0"], tmp_path / "qd")
    done = make_report([run], tmp_path / "out")
    names = {p.name for p in done["images"]}
    assert {"map_elites.png", "pareto.png", "diversity.png"} <= names
    assert not any("MAP-Elites" in n or "Pareto" in n for n in done["notes"])


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
    run = _qd_run(runs["m2n2-s1"], tmp_path / "qd")
    out = tmp_path / "report"
    make_report([runs["m2n2-s0"], run], out)
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
    assert result["images"] >= 6  # fitness, metrics, 2 archives, diversity, MAP-Elites, Pareto
    assert result["loaded"] == result["images"], result
    assert all(w > 0 for w in result["widths"])
    assert result["table"] and result["rows"] == 2
