"""plot and report: drawn from run directories alone, grouped as compare groups them, failed runs kept."""

import re
import shutil
import statistics
import subprocess
import time
from html.parser import HTMLParser
from xml.etree import ElementTree

import numpy as np
import pytest
from click.testing import CliRunner
from fake_runs import decaying, fake_run, write_torn_line

from asymtune import compare, html_report
from asymtune.cli import main
from asymtune.plotting import draw, series


@pytest.fixture
def grid(tmp_path):
    """Classification runs: B-only r8 and LoRA r8 over three seeds, A-only r8 over two, one failed LoRA run."""
    root = tmp_path / "runs"
    made = {"b": [], "lora": [], "a": []}
    for seed in range(3):
        made["b"].append(fake_run(root, "sst2-b-only", seed, 8, "B-only", task="classification",
                                  metrics={"glue_sst2": 0.93 + 0.01 * seed}, losses=decaying(0.7, seed)))
        made["lora"].append(fake_run(root, "sst2-lora", seed, 8, "LoRA", task="classification",
                                     metrics={"glue_sst2": 0.92 + 0.005 * seed}, losses=decaying(0.72, seed + 4)))
    for seed in range(2):
        made["a"].append(fake_run(root, "sst2-a-only", seed, 8, "A-only", task="classification",
                                  metrics={"glue_sst2": 0.90 + 0.02 * seed}, losses=decaying(0.75, seed + 8)))
    made["failed"] = fake_run(root, "sst2-lora", 3, 8, "LoRA", status="failed", task="classification",
                              losses=decaying(0.72, 11)[:6])
    made["failed"].set_status("failed", error="CUDA out of memory")
    write_torn_line(made["b"][0])  # a run killed mid-line: its last line is skipped, not an error
    return root, made


def test_curves_and_bars_are_the_seed_statistics_of_the_logs(grid):
    root, _ = grid
    drawn = series.panels(compare.build([str(root)], root, paper="table1"))
    curves = {(c.row.label, c.row.status): c for c in drawn.curves["loss"]}
    b_only = curves[("sst2-b-only", "completed")]
    logged = np.array([decaying(0.7, seed) for seed in range(3)])
    assert b_only.runs == 3 and b_only.steps == list(range(1, 21))
    assert b_only.mean == pytest.approx(logged.mean(axis=0).tolist())
    assert b_only.std == pytest.approx([statistics.stdev(column) for column in logged.T])
    failed = [c for c in drawn.curves["loss"] if c.row.status == "failed"]
    assert len(failed) == 1 and failed[0].steps == list(range(1, 7)) and failed[0].row.method == "LoRA"

    bars = {(bar.row.label, bar.row.status): bar for bar in drawn.finals["glue_sst2"]}  # the headline metric
    assert bars[("sst2-b-only", "completed")].value == pytest.approx(0.94)
    assert bars[("sst2-b-only", "completed")].std == pytest.approx(0.01)
    assert bars[("sst2-a-only", "completed")].std == pytest.approx(statistics.stdev([0.90, 0.92]))
    [not_done] = [bar for bar in drawn.finals["glue_sst2"] if bar.row.status == "failed"]
    assert not_done.value is None  # kept in its place, with no value
    # Table 1 reports SST-2 for B-only r=8 (hB_0 A_rand) as 95.8 ± 0.29, LoRA r=8 as 95.6 ± 0.36
    assert bars[("sst2-b-only", "completed")].paper == series.Marker("hB_0 A_rand (r=8)", pytest.approx(0.958),
                                                                     pytest.approx(0.0029))
    assert bars[("sst2-lora", "completed")].paper.label == "LoRA (r=8)"
    assert bars[("sst2-a-only", "completed")].paper.label == "B_rand hA_0 (r=8)"
    alone = [bar.row.label for bar in drawn.finals["glue_sst2"] if bar.row.method == "paper"]
    assert "paper: AdaLoRA" in alone and "paper: hB_0 A_rand (r=16)" in alone  # no variant of theirs here


def test_grouping_follows_compare(grid):
    root, _ = grid
    per_run = series.panels(compare.build([str(root)], root, per_run=True))
    assert len(per_run.curves["loss"]) == 9  # every run its own line
    by_rank = series.panels(compare.build([str(root)], root, group_by=["adapter.rank"]))
    assert [c.runs for c in by_rank.curves["loss"] if c.row.status == "completed"] == [8]


def test_plot_writes_png_and_svg_with_every_run_named(grid, tmp_path):
    root, made = grid
    png = tmp_path / "figure.png"
    result = CliRunner().invoke(main, ["plot", str(root), "--output", str(png), "--paper", "table1"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "figure.svg"
    assert CliRunner().invoke(main, ["plot", str(root), "--output", str(svg)]).exit_code == 0
    texts = " ".join(t.text or "" for t in ElementTree.parse(svg).iter() if t.tag.endswith("text"))
    for label in ("sst2-b-only — B-only r=8, n=3", "sst2-lora — LoRA r=8, n=3", "sst2-a-only — A-only r=8, n=2",
                  f"sst2-lora/{made['failed'].path.name} — LoRA r=8, failed", "training loss", "glue_sst2"):
        assert label in texts, label


def test_plot_refuses_what_it_cannot_draw(grid, tmp_path):
    root, _ = grid
    result = CliRunner().invoke(main, ["plot", str(root), "--metric", "glue_mnli", "--output", str(tmp_path / "f.png")])
    assert result.exit_code == 2
    assert "--metric glue_mnli: no compared run has it" in result.output and "glue_sst2" in result.output
    result = CliRunner().invoke(main, ["plot", str(root), "--output", str(tmp_path / "f.jpg")])
    assert result.exit_code == 2 and "give a .png or .svg file" in result.output
    assert CliRunner().invoke(main, ["plot", str(tmp_path / "nothing")]).exit_code == 2


def test_image_runs_get_in_and_out_of_domain_bars(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        for name, method, base in (("img-b-only", "B-only", 0.9), ("img-lora", "LoRA", 0.8)):
            fake_run(root, name, seed, 8, method, task="image", losses=decaying(2.0, seed), metrics={
                "rotated_digits_train_acc": 0.99, "rotated_digits_id_acc": base + 0.01 * seed,
                "rotated_digits_rot15_acc": base - 0.1, "rotated_digits_rot30_acc": base - 0.3 + 0.02 * seed,
                "rotated_digits_ood_acc": base - 0.2, "rotated_digits_validation_acc": base})  # validation: ID
    drawn = series.panels(compare.build([str(root)], root))
    assert list(drawn.finals) == ["rotated_digits_ood_acc"]
    domains = drawn.domains
    assert domains.dataset == "rotated_digits" and domains.environments == ["id", "rot15", "rot30"]
    cells = {row.label: values for row, values in domains.rows}
    assert cells["img-b-only"][0] == (pytest.approx(0.905), pytest.approx(statistics.stdev([0.9, 0.91])))
    assert cells["img-lora"][2][0] == pytest.approx(0.51)
    assert CliRunner().invoke(main, ["plot", str(root), "--output", str(tmp_path / "d.png")]).exit_code == 0


class Page(HTMLParser):
    """Tags, attributes and text of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.text, self.rows, self.in_row = [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs
        if tag == "tr":
            self.rows.append([])
            self.in_row = True

    def handle_endtag(self, tag):
        self.in_row = self.in_row and tag != "tr"

    def handle_data(self, data):
        self.text.append(data)
        if self.in_row and data.strip():
            self.rows[-1].append(data.strip())


def test_report_is_one_self_contained_page_with_table_figure_diffs_and_environment(grid, tmp_path):
    root, _ = grid
    output = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(root), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "9 runs (8 completed, 1 failed), 4 rows" in " ".join(result.output.split())
    page = Page()
    page.feed(output.read_text())
    assert "script" not in page.tags and "img" not in page.tags and "link" not in page.tags
    assert not [value for name, value in page.attributes if name in ("src", "href")]  # nothing fetched
    assert page.tags.count("svg") == 1  # the figure, inline
    text = " ".join(page.text)
    rows = compare.build([str(root)], root).rows
    for row in rows:  # compare's rows, cell for cell
        expected = [row.label, *compare.identity_cells(row),
                    *(compare.cell_text(row, column, None) for column in compare.shown_columns(rows))]
        assert [cell for cell in expected if cell] == next(r for r in page.rows if r and r[0] == row.label)
    assert "CUDA out of memory" in text  # the failed run's error
    assert re.search(r"-seed: \d .*\+seed: \d", text, re.S)  # another seed's run against the first
    environments = [r for r in page.rows if r and r[0].startswith("9: ")]  # one environment, all nine runs
    assert len(environments) == 1 and "5.0.test" in environments[0] and "This report:" in text


def test_report_over_fifty_runs_takes_under_five_seconds(tmp_path):
    root = tmp_path / "runs"
    for index in range(50):
        method = ("B-only", "A-only", "LoRA")[index % 3]
        fake_run(root, f"grid-{method.lower()}-r{4 << index % 4}", index // 12, 4 << index % 4, method,
                 status="failed" if index % 17 == 5 else "completed", metrics={"eval_loss": 1 + index / 100},
                 losses=decaying(2.0, index, steps=300), eval_losses={s: 2 - s / 300 for s in range(0, 301, 50)})
    started = time.perf_counter()
    written = html_report.write([str(root)], root, tmp_path / "report.html")
    elapsed = time.perf_counter() - started
    assert written.runs == 50 and written.statuses == {"completed": 47, "failed": 3}
    assert elapsed < 5.0, f"{elapsed:.2f} s"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless Chromium (apt install chromium)")
def test_report_renders_in_a_headless_browser(grid, tmp_path):
    from PIL import Image

    root, _ = grid
    html_report.write([str(root)], root, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800",
                    f"--screenshot={shot}", (tmp_path / "report.html").as_uri()], check=True, capture_output=True,
                   timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int).reshape(-1, 3)
    assert pixels.std() > 20  # not a blank page
    for method in ("B-only", "LoRA", "A-only"):  # the figure's bars, in their families' colours
        colour = np.array([int(draw.HUES[method][i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - colour).max(axis=1) <= 2).sum() > 500, method
