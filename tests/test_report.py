"""`tis-ray report`, opened in a real headless Chromium: no request, no console error, the
file's own counts, and a threshold control that agrees with `tis-ray filter` exactly."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import chromium, open_report  # noqa: F401 - chromium is a fixture
from conftest import PHOTO_NAMES, REPO
from jobs import read_output, run_cli
from PIL import Image
from scipy.stats import spearmanr
from scored_files import scored_table, write_scored

from tis_ray.errors import error_kind

MAX_REPORT_BYTES = 5 * 1024 * 1024


def _filter(scored, out, *rule):
    result = run_cli("filter", str(scored), "-o", str(out), *rule)
    assert result.returncode == 0, result.stderr
    kept = int(re.search(r"kept \d+ of \d+ rows \((\d+) of", result.stdout).group(1))
    return kept, re.search(r">= (\d\.\d{4})", result.stdout).group(1)


def _not_blank(png: bytes) -> None:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[0] > 500 and image.std() > 20, image.shape
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 500  # text, charts and photos, not a flat page


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory, tiny_model, local_ray):
    """The bundled example scored with `score --report`, as the README's demo runs it (offline)."""
    folder = tmp_path_factory.mktemp("demo")
    source = folder / "pairs.csv"
    shutil.copy(REPO / "examples" / "pairs.csv", source)
    shutil.copytree(REPO / "examples" / "images", folder / "images")
    out = folder / "pairs.scored.csv"
    result = run_cli("score", str(source), "-o", str(out), "--report", "--dtype", "float32",
                     env={"TIS_MODEL": tiny_model, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {out}.report.html" in result.stdout
    return out, folder / "pairs.scored.csv.report.html"


def test_demo_report_in_chromium(demo_report, chromium, tmp_path):  # noqa: F811
    scored, report = demo_report
    assert report.stat().st_size < MAX_REPORT_BYTES
    table = read_output(scored)
    similarities = table.column("similarity").to_pylist()
    errors = Counter(error_kind(e) for e in table.column("error").to_pylist() if e)
    opened = open_report(chromium, report)
    png = opened.page.screenshot(full_page=True)
    (tmp_path / "report.png").write_bytes(png)
    _not_blank(png)

    assert opened.number("#count-rows") == table.num_rows
    assert opened.number("#count-scored") == sum(s is not None for s in similarities)
    assert opened.number("#count-errors") == sum(errors.values())
    shown = {row.get_attribute("data-kind"): int(row.query_selector_all("td")[1].inner_text())
             for row in opened.page.query_selector_all("#error-table tr[data-kind]")}
    assert shown == errors
    # thumbnails of the real photos: decoded by the browser, at most 128 px a side
    sizes = opened.page.eval_on_selector_all(
        "#grid-lowest img", "imgs => imgs.map(i => [i.src.slice(0, 23), i.naturalWidth, i.naturalHeight])")
    assert len(sizes) == sum(s is not None for s in similarities)
    assert all(src == "data:image/jpeg;base64," and 0 < w <= 128 and 0 < h <= 128 for src, w, h in sizes)

    bins = sorted({round(s * 10_000) for s in similarities if s is not None})
    for n, bin_ in enumerate((bins[1], bins[len(bins) // 2], bins[-1] + 1)):
        opened.slide_to(bin_)
        threshold = opened.text("#threshold-value")
        assert threshold == f"{bin_ / 10_000:.4f}"
        kept, _ = _filter(scored, tmp_path / f"kept{n}.csv", "--min-similarity", threshold)
        assert opened.number("#kept-count") == kept
        assert f"--min-similarity {threshold}" in opened.text("#filter-command")

    opened.keep_top("30")
    kept, threshold = _filter(scored, tmp_path / "top.csv", "--keep-top", "30%")
    assert opened.text("#threshold-value") == threshold
    assert opened.number("#kept-count") == kept
    assert "--keep-top 30%" in opened.text("#filter-command")
    assert opened.requests == [] and opened.console_errors == []


def test_several_models_and_bounded_size(tmp_path, chromium):  # noqa: F811
    """A generated two-model output: each model's histogram, slider and command, and their
    rank correlation as scipy computes it over the rows both scored."""
    table = scored_table(20_000, models=("similarity_b32", "similarity_l14"), seed=21, tie_values=300)
    scored = write_scored(tmp_path / "multi.parquet", table, row_group_rows=3000)
    report = tmp_path / "multi.html"
    result = run_cli("report", str(scored), "-o", str(report), "--no-thumbnails")
    assert result.returncode == 0, result.stderr
    assert report.stat().st_size < MAX_REPORT_BYTES
    opened = open_report(chromium, report)
    _not_blank(opened.page.screenshot(full_page=True))
    a, b = (np.array(table.column(c).to_pylist(), dtype=float) for c in ("similarity_b32", "similarity_l14"))
    both = ~np.isnan(a) & ~np.isnan(b)
    rho = spearmanr(a[both], b[both]).statistic
    assert f"Spearman rank correlation {rho:.4f} over {both.sum():,} rows" in opened.text("#model-pairs")

    for index, (name, values) in enumerate((("b32", a), ("l14", b))):
        opened.page.select_option("#model-select", str(index))
        scored_values = values[~np.isnan(values)]
        percentiles = dict(row.split("\t") for row in opened.text("#percentiles").splitlines()[1:])
        for p in (1, 50, 99):
            assert float(percentiles[f"p{p}"]) == pytest.approx(np.percentile(scored_values, p, method="inverted_cdf"))
        bin_ = round(float(np.median(scored_values)) * 10_000)
        opened.slide_to(bin_)
        assert f"--model {name}" in opened.text("#filter-command")
        kept, _ = _filter(scored, tmp_path / f"kept-{name}.parquet", "--min-similarity", f"{bin_ / 10_000:.4f}",
                          "--model", name)
        assert opened.number("#kept-count") == kept == int((scored_values >= bin_ / 10_000 - 1e-9).sum())
        assert pq.read_table(tmp_path / f"kept-{name}.parquet").num_rows == kept
    assert opened.requests == [] and opened.console_errors == []


def test_report_of_a_missing_file_is_one_line(tmp_path):
    result = run_cli("report", str(tmp_path / "nope.csv"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no such file" in result.stderr


def _page_data(report) -> dict:
    text = report.read_text()
    start = text.index('id="report-data">') + len('id="report-data">')
    return json.loads(text[start:text.index("</script>", start)])


def test_thumbnails_and_borderline_pairs(tmp_path, image_server):
    """Thumbnails come through scoring's fetcher (a 404 shows its row error instead), at most
    128 px; the strip holds the pairs nearest the threshold asked for, on each side."""
    table = scored_table(400, seed=13, tie_values=120, error_share=0.0)
    urls = [image_server.url("status/404") if i % 10 == 0 else image_server.url(f"photo/{PHOTO_NAMES[i % 6]}.jpg")
            for i in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("image_url"), "image_url", pa.array(urls))
    scored = write_scored(tmp_path / "scored.csv", table)
    report = tmp_path / "scored.html"
    result = run_cli("report", str(scored), "-o", str(report), "--thumbnails", "8", "--threshold", "0.55")
    assert result.returncode == 0, result.stderr
    data = _page_data(report)
    rows = table.to_pylist()
    by_score = sorted(rows, key=lambda r: (r["similarity"], r["row"]))
    assert [p["row"] for p in data["grids"]["lowest"]] == [r["row"] for r in by_score[:8]]
    assert [p["row"] for p in data["grids"]["highest"]] == [r["row"] for r in sorted(
        rows, key=lambda r: (-r["similarity"], r["row"]))[:8]]
    assert [p["row"] for p in data["grids"]["above"]] == [r["row"] for r in by_score if r["similarity"] >= 0.55][:4]
    assert [p["row"] for p in data["grids"]["below"]] == [r["row"] for r in sorted(
        (r for r in rows if r["similarity"] < 0.55), key=lambda r: (-r["similarity"], r["row"]))][:4]
    shown = [p for group in data["grids"].values() for p in group]
    for pair in shown:
        if "/status/404" in pair["image"]:
            assert pair["thumb"].startswith("http_404: ")
        else:
            head, _, body = pair["thumb"].partition(",")
            assert head == "data:image/jpeg;base64"
            image = Image.open(io.BytesIO(base64.b64decode(body)))
            assert image.format == "JPEG" and max(image.size) <= 128
    assert any("/status/404" in p["image"] for p in shown)
