"""`ponder report`: a self-contained HTML page of a run (or several), checked in a real browser.

The browser test opens the page from a file URL in headless chromium, fails on any console
message of level SEVERE, checks that every figure of the summary table equals the run's own
eval/report.json, and saves a screenshot.
"""
import json
import re
import shutil

import pytest
from browser_support import full_page_screenshot, open_browser, why_no_browser

from ponder.cli import main
from ponder.reports.page import build_page


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("report") / "run"
    assert main(["train", "debug", "--run-dir", str(d), "--train.steps=20"]) == 0
    return d


def _summary_cells(html: str) -> dict[str, list]:
    cells: dict[str, list] = {}
    for key, value in re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', html):
        cells.setdefault(key, []).append(json.loads(value.replace("&quot;", '"').replace("&#x27;", "'")))
    return cells


def _expected(report: dict) -> dict:
    h, t = report["held_out"], report["train"]
    out = {"held_out.exact": h["exact"], "held_out.cell": h["cell"], "held_out.mean_steps": h["mean_steps"],
           "held_out.exact_at_M": h["exact_by_budget"][-1], "train.exact": t["exact"],
           "held_out.max_steps": h["max_steps"]}
    for name, b in report["baselines"].items():
        for c, v in b.items():
            out[f"baselines.{name}.{c}"] = v
    return out


def test_page_shows_the_runs_figures_and_needs_no_network(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    cells = _summary_cells(page)
    for key, value in _expected(report).items():
        assert cells[key] == [value], key
    # no resource is fetched: no src= at all; href= only to in-page anchors or inline data (imshow)
    assert not re.search(r"\ssrc=", page)
    assert not [h for h in re.findall(r'href="([^"]*)"', page) if not h.startswith(("#", "data:"))]
    data = json.loads(re.search(r'id="ponder-data">(.*?)</script>', page, re.S).group(1))["run"]
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert data["loss"] == [[r["step"] for r in log if r["kind"] == "train"],
                            [r["loss"] for r in log if r["kind"] == "train"]]
    assert data["test_exact"][1] == [r["test_exact"] for r in log if r["kind"] == "eval"]
    for section in ("Training curves", "Held-out exact against step budget", "Steps used against difficulty",
                    "Halting health", "Controller actions", "Health checklist", "Held-out samples"):
        assert f"<h2>{section}" in page
    assert page.count('<figure><figcaption>held-out sample') == 6  # the task's renderer drew them


def test_several_runs_side_by_side(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    out = tmp_path / "cmp.html"
    assert main(["report", str(run_dir), str(other), "--out", str(out), "--samples=0"]) == 0
    page = out.read_text()
    assert "2 runs compared" in page
    assert len(_summary_cells(page)["held_out.exact"]) == 2


@pytest.mark.parametrize("args, message", [
    (["report", "/no/such/run"], "no such run directory"),
    (["report", "{tmp}"], "is not a run directory"),
    (["report", "{run}", "--out", "{tmp}"], "is a directory"),
    (["report", "{run}", "--samples=-1"], "--samples must be >= 0"),
    (["report", "{run}", "--out", "/no/such/dir/x.html"], "no such directory"),
])
def test_bad_input_is_one_line(run_dir, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ponder: error")]
    assert len(err) == 1 and message in err[0]  # (a data cache being built may print progress above it)


def test_corrupt_eval_report_is_one_line(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "eval" / "report.json").write_text("{not json")
    assert main(["report", str(bad)]) == 2
    assert "report.json is unreadable or corrupt" in capsys.readouterr().err


@pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser()))
def test_page_in_a_real_browser(run_dir, tmp_path):
    page = tmp_path / "page.html"
    page.write_text(build_page([run_dir]))
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    driver = open_browser()
    try:
        driver.get(page.resolve().as_uri())
        assert driver.title == f"ponder: {run_dir.name}"
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#summary td[data-key]'))"
            ".map(td => [td.dataset.key, td.dataset.value, td.innerText])")
        for key, value in _expected(report).items():
            (row,) = [r for r in shown if r[0] == key]
            assert json.loads(row[1]) == value, key
            if isinstance(value, float) and key != "held_out.mean_steps":
                assert row[2] == f"{100 * value:.1f}%", key  # what a person reads is the same figure
        n_svg = driver.execute_script("return document.querySelectorAll('figure svg').length")
        assert n_svg >= 10  # curves, budget, heatmap, timeline and six samples rendered as SVG
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('figure svg')).map(s => s.getBoundingClientRect().width)")
        assert min(widths) > 50  # every figure was laid out with a real size
        shot = tmp_path / "report.png"
        full_page_screenshot(driver, shot)
        assert shot.stat().st_size > 20_000
    finally:
        driver.quit()
