"""report.html the way a reader meets it: opened in headless Chromium (Debian's `chromium`, driven by
Playwright), every figure loaded, every table drawn, nothing wider than the page but inside its own scrolling
box, figures at a readable scale, no console error; a full-page screenshot.

Outside CI the test skips without the browser or Playwright; in CI (CI set) it fails. Install them with
`apt-get install -y chromium` and `pip install -e ".[browser]"`. DOGE_SCREENSHOT=path.png keeps the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_report import make_run_dir

from dogetickets.report import write_report
from dogetickets.report.document import FIGURE_PX_PER_INCH, png_size
from dogetickets.report.figures import plot_pilot
from dogetickets.tickets import Ticket

CHROMIUM = os.environ.get("DOGE_CHROMIUM", "/usr/bin/chromium")
# Chromium in a closed network: no sandbox (root in a container), no GPU, no calls home
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
WIDTH = 1280  # a laptop's browser window, CSS px
LAYERS, HEADS, DOMAINS = 6, 12, ("All_Beauty", "Automotive", "Digital_Music", "Gift_Cards")


def _browser() -> Any:
    """Playwright's sync API, or skip (fail in CI) naming what to install."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append('Playwright (pip install -e ".[browser]")')
    if not Path(CHROMIUM).is_file():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    if missing:
        message = "the browser check needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


# ---- a small study's run directories, written by hand: every figure and table of the report --------------
def _scores(seed: int) -> dict[str, Any]:
    """scores.json of a MiniLM-sized encoder (6 layers x 12 heads) over four training domains."""
    rng = np.random.default_rng(seed)
    base_h, base_f = rng.gamma(2.0, 0.1, (LAYERS, HEADS)), rng.gamma(4.0, 0.1, LAYERS)
    per = {d: {"heads": (base_h * rng.uniform(0.6, 1.4, base_h.shape)).tolist(),
               "ffn": (base_f * rng.uniform(0.7, 1.3, LAYERS)).tolist()} for d in DOMAINS}
    h = np.array([per[d]["heads"] for d in DOMAINS])
    f = np.array([per[d]["ffn"] for d in DOMAINS])
    noise = {d: {"heads": (1e-4 * rng.random((LAYERS, HEADS))).tolist(), "ffn": (1e-4 * rng.random(LAYERS)).tolist()}
             for d in DOMAINS}
    return {"domains": list(DOMAINS), "num_layers": LAYERS, "num_heads": HEADS, "counts": dict.fromkeys(DOMAINS, 50),
            "per_domain": per, "per_domain_sampling_var": noise,
            "combined": {"winning": {"heads": h.mean(0).tolist(), "ffn": f.mean(0).tolist()},
                         "doge-l100": {"lambda": 100.0, "heads": (h.mean(0) - 100 * h.var(0)).tolist(),
                                       "ffn": (f.mean(0) - 100 * f.var(0)).tolist()}}}


def _tickets(folder: Path, scores: dict[str, Any], seed: int) -> None:
    """Winning, doge (λ 10 and 100) and random tickets at 10% and 30%, the lowest-scored heads pruned."""
    h = np.array([scores["per_domain"][d]["heads"] for d in DOMAINS])
    rank = {"winning": h.mean(0), "doge": h.mean(0) - 100 * h.var(0),
            "random": np.random.default_rng(seed).random((LAYERS, HEADS))}
    folder.mkdir(parents=True, exist_ok=True)
    for target in (0.1, 0.3):
        for method, lam in (("winning", None), ("doge", 10.0), ("doge", 100.0), ("random", None)):
            order = np.argsort(rank[method], axis=None)[: round(target * LAYERS * HEADS)]
            pruned: dict[str, list[int]] = {}
            for i in order:
                pruned.setdefault(str(i // HEADS), []).append(int(i % HEADS))
            Ticket(method, target, target, pruned, [1] if target > 0.2 else [], LAYERS, HEADS, lam=lam,
                   seed=seed, allocation="proportional").save(folder / f"{method}-{target}-{lam}.json")


def _small_study(root: Path) -> list[Path]:
    """Two run directories (test_report's hand-made runs) with scores, tickets, ERM logs and a preview."""
    first = make_run_dir(root / "amazon_a")
    for seed in (0, 1):
        scores = _scores(seed)
        (first / f"seed{seed}" / "scores" / "scores.json").write_text(json.dumps(scores))
        _tickets(first / f"seed{seed}" / "tickets", scores, seed)
        log = [{"epoch": e, "step": 5 * (e + 1), "dev": 0.55 + 0.03 * e - 0.04 * (e == 2)} for e in range(3)]
        (first / f"seed{seed}" / "erm" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    grid = [(s, m, lam, t) for s in (0, 1) for m, lam in (("winning", None), ("doge", 100.0), ("random", None))
            for t in np.arange(0, 0.65, 0.05)]
    pd.DataFrame({"seed": [g[0] for g in grid], "method": [g[1] for g in grid], "lambda": [g[2] for g in grid],
                  "target_sparsity": [g[3] for g in grid], "sparsity": [g[3] for g in grid],
                  "dev_score": [0.8 - g[3] ** 2 * (1.5 if g[1] == "random" else 1.0) for g in grid],
                  "test_mean": [0.7 - g[3] ** 2 for g in grid]}).to_csv(first / "preview.csv", index=False)
    second = root / "amazon_b"
    shutil.copytree(first, second)
    (second / "config.toml").write_text(f'[run]\nout = "{second}"\n')
    return [first, second]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Any]]]:
    """report.html of the small study, and every matplotlib figure drawn for it (kept open)."""
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("browser")
    out = root / "report"
    rng = np.random.default_rng(0)
    drawn: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "close", drawn.append)
        plot_pilot({d: rng.random((3, 24)) for d in DOMAINS[:2]}, out)  # `doge run`'s pilot figure, in the report
        md = write_report(_small_study(root), out=out, n_boot=50)
    yield md.with_suffix(".html"), drawn
    for fig in drawn:
        plt.close(fig)


@pytest.fixture(scope="module")
def report_html(report: tuple[Path, list[Any]]) -> Path:
    return report[0]


# JS: what the page shows. A table "fits" when it ends within the page or sits in a box that scrolls it.
INSPECT = """() => {
  const page = document.documentElement.clientWidth;
  const scrolls = el => { for (let p = el.parentElement; p; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if ((o === 'auto' || o === 'scroll') && p.getBoundingClientRect().right <= page + 0.5) return true; }
    return false; };
  return {
    page, scrollWidth: document.documentElement.scrollWidth,
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, natural: i.naturalWidth,
      shown: i.getBoundingClientRect().width, right: i.getBoundingClientRect().right})),
    tables: [...document.querySelectorAll('table')].map(t => { const r = t.getBoundingClientRect();
      return {rows: t.rows.length, cells: t.querySelectorAll('td').length, width: r.width, height: r.height,
              fits: r.right <= page + 0.5 || scrolls(t)}; }),
  };
}"""


def _open(html: Path, width: int, screenshot: Path) -> tuple[dict[str, Any], list[str]]:
    """What INSPECT finds in the page at `width` CSS px, and the console's errors; the full-page screenshot."""
    errors: list[str] = []
    with _browser()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html.as_uri(), wait_until="load")
            page.wait_for_function("[...document.images].every(i => i.complete)")
            info = page.evaluate(INSPECT)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return info, errors


def _check_page(info: dict[str, Any], errors: list[str], n_images: int) -> None:
    assert not errors, errors
    assert len(info["images"]) == n_images
    for img in info["images"]:
        assert img["complete"] and img["natural"] > 0, f"figure {img['alt']!r} did not load"
        assert img["right"] <= info["page"] + 0.5, f"figure {img['alt']!r} is wider than the page"
    assert info["tables"], "no table"
    for i, t in enumerate(info["tables"]):
        assert t["rows"] > 1 and t["cells"] > 0 and t["width"] > 0 and t["height"] > 0, f"table {i} is empty: {t}"
        assert t["fits"], f"table {i} is wider than the page and not in a scrolling box: {t}"
    assert info["scrollWidth"] <= info["page"], "the page scrolls sideways"


def test_report_html_in_chromium(report_html: Path, tmp_path: Path) -> None:
    html = report_html.read_text(encoding="utf-8")
    pngs = sorted(report_html.parent.glob("*.png"))
    assert len(pngs) >= 7 and html.count("data:image/png;base64,") == len(pngs)  # every figure, inlined
    info, errors = _open(report_html, WIDTH, tmp_path / "screenshot.png")
    _check_page(info, errors, len(pngs))
    # readable: every figure shown between ~90 px per figure inch (the widest, narrowed to the page) and
    # FIGURE_PX_PER_INCH, never at the PNG's own 150 px per inch (a small figure's text would be twice the page's)
    dpi = {p.stem: png_size(p.read_bytes())[2] for p in pngs}
    assert all(d and abs(d - 150) < 1 for d in dpi.values()), dpi
    for img in info["images"]:
        per_inch = img["shown"] / img["natural"] * 150
        assert 90 <= per_inch <= FIGURE_PX_PER_INCH + 0.5, (img["alt"], per_inch)
    shot = (tmp_path / "screenshot.png").read_bytes()
    assert png_size(shot)[0] == WIDTH  # the full page is no wider than the window
    if os.environ.get("DOGE_SCREENSHOT"):
        shutil.copyfile(tmp_path / "screenshot.png", os.environ["DOGE_SCREENSHOT"])


def test_report_html_on_a_narrow_window(report_html: Path, tmp_path: Path) -> None:
    """A phone-sized window: figures narrow to it, wide tables scroll in their boxes, the page does not."""
    info, errors = _open(report_html, 420, tmp_path / "narrow.png")
    _check_page(info, errors, len(list(report_html.parent.glob("*.png"))))


def test_no_legend_over_a_panel(report: tuple[Path, list[Any]]) -> None:
    """Every legend of every figure in the report sits beside or under the panels, never over the data."""
    figures = report[1]
    assert len(figures) == len(list(report[0].parent.glob("*.png")))
    for fig in figures:
        fig.canvas.draw()
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
        assert legends, fig.texts or [ax.get_title() for ax in fig.axes]
        for legend in legends:
            box = legend.get_window_extent()
            over = [ax.get_title() for ax in fig.axes if box.overlaps(ax.get_window_extent())]
            assert not over, f"a legend over {over}"
