"""`trainyard report` and the reports `trainyard train` writes: files a person opens, with
plots that are real images, from whatever the directory holds."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

TINY = ["data.train_size=256", "data.val_size=16", "model.n_layers=1", "model.d_model=32", "epochs=2"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, read from its header; fails for anything else."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trainyard.cli.main import main

    run = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", str(ROOT / "jobs" / "configs" / "addition.yaml"), *TINY, f"checkpoint_dir={run}"]) == 0
    return run


def test_trainyard_train_leaves_a_report_with_its_curves(trained):
    report = trained / "report"
    assert (trained / "results.json").is_file()
    names = {p.name for p in report.glob("*.png")}
    assert names == {"loss.png", "accuracy.png", "learning_rate.png", "grad_norm.png", "throughput.png"}
    for name in names:
        width, height = png_size(report / name)
        assert width > 300 and height > 200, name
    md = (report / "report.md").read_text()
    assert all(f"]({name})" in md for name in names) and "| val/exact_match |" in md
    html = (report / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == len(names)  # self-contained
    assert "<img" in html and "src='loss.png'" not in html


def test_a_section_without_data_is_left_out_not_drawn_empty(trained, tmp_path):
    from trainyard.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    results = json.loads((trained / "results.json").read_text())
    for row in results["metrics_summary"]:
        for key in [k for k in row if k.startswith("throughput/")]:
            del row[key]
    results["grad_norm_history"] = []
    (run / "results.json").write_text(json.dumps(results))
    write_report(run)
    assert {p.name for p in (run / "report").glob("*.png")} == {"loss.png", "accuracy.png", "learning_rate.png"}


def test_a_run_in_object_storage_is_reported_there(trained, bucket, capsys):
    from trainyard import storage
    from trainyard.cli.main import main

    with storage.staged(bucket.uri("runs", "tiny")) as out:  # the run, as a Ray run on S3 leaves it
        shutil.copytree(trained, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("report"))
    assert main(["report", "tiny", "--storage", bucket.uri("runs")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {bucket.uri('runs', 'tiny', 'report', 'report.html')}"
    written = {k.rsplit("/", 1)[1] for k in bucket.keys("runs/tiny/report/")}
    assert written == {"report.html", "report.md", "loss.png", "accuracy.png", "learning_rate.png", "grad_norm.png", "throughput.png"}
    html = storage.read_text(bucket.uri("runs", "tiny", "report", "report.html"))
    assert "<h1>trainyard train tiny</h1>" in html and f"<code>{bucket.uri('runs', 'tiny')}</code>" in html
    assert "trainyard-download" not in html  # the local copy it was drawn from is nowhere in it
    assert main(["report", bucket.uri("runs", "other")]) == 2
    assert f"{bucket.uri('runs', 'other')}: no run is there" in capsys.readouterr().err


def test_report_of_a_directory_with_nothing_to_report_says_what_it_expected(tmp_path, capsys):
    from trainyard.cli.main import main

    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trainyard: error: {tmp_path} holds nothing to report: expected pipeline.json (trainyard run)")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# Run in the page by the browser: every table (and cell) that is wider than the page shows, by
# its first header and its overflow in pixels. Written into the DOM, which --dump-dom prints.
_MEASURE = """<script>addEventListener('load', () => {
  const out = [];
  for (const t of document.querySelectorAll('table')) {
    const box = t.parentElement, name = t.querySelector('th') ? t.querySelector('th').textContent : '?';
    if (box.scrollWidth > box.clientWidth + 1) out.push(`table ${name}: ${box.scrollWidth - box.clientWidth}px scrolled`);
    for (const c of t.querySelectorAll('td')) if (c.scrollWidth > c.clientWidth + 1) out.push(`cell in table ${name}: ${c.textContent.slice(0, 40)}`);
    if (t.getBoundingClientRect().right > document.documentElement.clientWidth) out.push(`table ${name}: past the window's edge`);
  }
  const p = document.createElement('pre'); p.id = 'overflow'; p.textContent = JSON.stringify(out); document.body.appendChild(p);
});</script>"""


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    return found


def overflow_at(report: Path, width: int, tmp_path: Path) -> list[str]:
    """What of `report` (an HTML file) is cut off or scrolls sideways in a browser window
    `width` pixels wide: laid out by Chromium itself."""
    page = tmp_path / f"measured-{report.parent.parent.name}.html"
    page.write_text(report.read_text().replace("</body>", _MEASURE + "</body>"))
    proc = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},1000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    import html
    import re

    found = re.search(r"<pre id=\"overflow\">(.*?)</pre>", proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def screenshot(report: Path, width: int, shot: Path) -> None:
    proc = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
                           f"--window-size={width},1400", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]


@pytest.mark.slow
def test_the_html_report_renders_in_a_browser(trained, tmp_path):
    shot = tmp_path / "shot.png"
    screenshot(trained / "report" / "report.html", 1280, shot)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert png_size(shot) == (1280, 1400)
    # Not blank: many distinct colours (the plots' lines and text), and ink on a fair share of it.
    colours = {tuple(p) for p in (pixels[::7, ::7].reshape(-1, 3) * 255).astype(int).tolist()}
    ink = (pixels.mean(axis=2) < 0.9).mean()
    assert len(colours) > 50 and ink > 0.02, (len(colours), ink)
    assert overflow_at(trained / "report" / "report.html", 1280, tmp_path) == []  # nothing cut off or scrolled sideways
