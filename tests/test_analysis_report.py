"""`bench report`: the self-contained HTML page (rendered in headless Chromium) and Markdown."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.cli import main

FIXTURE = Path(__file__).parent / "fixtures"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Marks every image with whether it decoded (naturalWidth > 0) once the page has loaded.
CHECK_IMAGES = """<script>
window.addEventListener('load', function () {
  var images = document.images;
  for (var i = 0; i < images.length; i++) {
    var ok = images[i].complete && images[i].naturalWidth > 0;
    images[i].setAttribute('data-loaded', ok ? 'yes' : 'no');
  }
  document.body.setAttribute('data-images-checked', String(images.length));
});
</script>"""


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    code = main(["report", str(FIXTURE / "results"), "--out", str(out),
                 "--claims", str(FIXTURE / "claims.yaml")])
    assert code == 0
    return out


def test_report_files(report_dir):
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)
    # quick: means + p-values; oodml: means + p-values + curves + deviation + rank changes;
    # claims: one panel figure
    assert len(images) == 8
    assert "src=\"http" not in page and "<link" not in page  # nothing fetched from outside
    for text in ("Protocol quick", "Protocol oodml_glyphs", "Claim audits", "does not hold",
                 "Kendall tau", "Holm"):
        assert text in page
    markdown = (report_dir / "report.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\((report_figures/[^)]+\.png)\)", markdown)
    assert len(linked) == 8 and all((report_dir / link).is_file() for link in linked)
    assert "| rank | method | n | MAP@R |" in markdown
    for name in ("quick_comparison.tex", "quick_comparison.csv", "quick_comparison.md",
                 "oodml_glyphs_comparison_pairs.csv"):
        assert (report_dir / "tables" / name).is_file()


def test_report_of_one_directory_defaults(tmp_path, capsys):
    target = tmp_path / "quick"
    shutil.copytree(FIXTURE / "results" / "quick", target)
    assert main(["report", str(target), "--no-claims"]) == 0
    assert (target / "report.html").is_file() and (target / "report.md").is_file()
    assert "wrote" in capsys.readouterr().out


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed "
                    "(apt-get install -y chromium); needed to render the report")
def test_report_renders_in_headless_chromium_with_every_figure(report_dir, tmp_path):
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    expected = page.count("<img ")
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK_IMAGES + "</body>"), encoding="utf-8")
    done = run_chromium(tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom",
                        checked.as_uri())
    dom = done.stdout
    assert f'data-images-checked="{expected}"' in dom, done.stderr[-2000:]
    assert dom.count('data-loaded="yes"') == expected
    assert 'data-loaded="no"' not in dom

    screenshot = tmp_path / "report.png"
    done = run_chromium(tmp_path / "profile-shot", f"--screenshot={screenshot}",
                        "--window-size=1280,2000", (report_dir / "report.html").as_uri())
    assert screenshot.is_file(), done.stderr[-2000:]
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == (1280, 2000)
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # not a blank page
    print(f"report screenshot: {screenshot}")
