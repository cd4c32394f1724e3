"""The documentation: generated pages and tables match their sources, and the site builds strictly."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gen():
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tables_match_their_json():
    # Every generated block (README and docs) equals what the cards and docs/results/*.json give now.
    gen = _gen()
    pages = gen.expected()
    bad = [p for p, text in pages.items() if p != "docs/cli.md" and (ROOT / p).read_text() != text]
    assert not bad, f"tables differ from their JSON in {bad}: run python docs/gen.py"


def test_generated_blocks_exist():
    # The pages keep their tables: a block deleted by hand would pass the check above silently.
    text = {p: (ROOT / p).read_text() for p in ("README.md", "docs/codec.md", "docs/deployment.md",
                                                "docs/results.md", "docs/training.md", "docs/study.md")}
    for page, name in [("README.md", "levels-short"), ("README.md", "runtime-mb"), ("docs/codec.md", "levels-mnist"),
                       ("docs/codec.md", "levels-fashion"), ("docs/deployment.md", "runtime-table"),
                       ("docs/results.md", "levels-short"), ("docs/training.md", "plain-models"),
                       ("docs/study.md", "study-grid1"), ("docs/study.md", "study-grid2"),
                       ("docs/study.md", "study-questions"), ("docs/study.md", "study-verdict")]:
        assert f"<!-- gen:{name} -->" in text[page], (page, name)


def test_levels_table_reads_the_cards():
    gen = _gen()
    table = gen.levels_mnist()
    card = gen._cards()
    q2 = next(c for c in card if c["name"] == "mnist-q2")
    assert f"| {q2['codec_metrics']['bytes_per_image']:.2f} | {q2['codec_metrics']['psnr']:.2f} |" in table
    assert "mnist-q2 (default)" in table


def test_cli_page_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == _gen().cli_page(), \
        "docs/cli.md differs from the CLI: run python docs/gen.py"


def test_cli_page_lists_every_command():
    import typer

    from kaecompress.cli.main import app

    page = (ROOT / "docs" / "cli.md").read_text()
    for name in typer.main.get_command(app).commands:
        assert f"## kaec {name}\n" in page


@pytest.mark.skipif(shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (the docs extra)")
def test_site_builds_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                                  "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "cli" / "index.html").exists()
    assert (tmp_path / "site" / "api" / "index.html").exists()
