"""Odd file names are data: rich markup is never interpreted, non-UTF-8 names are stored losslessly and
printed escaped, markdown and HTML in names are escaped in reports (issue 14, items 9, 10, 13)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike import Index
from tests.conftest import picture, run_cli

MARKUP_NAMES = ["[bold]x.jpg", "y[/red].jpg", ":smile: z.jpg"]
BROKEN = "[red]broken.jpg"
TERMINAL = {"TTY_COMPATIBLE": "1", "COLUMNS": "300", "NO_COLOR": "1"}  # rich's own output, not the piped one


@pytest.fixture
def marked(tmp_path, tiny_model):
    """A folder named like markup, holding markup-named copies of one photo (exact duplicates), two other
    photos, and a broken file whose name is markup."""
    root = tmp_path / "[bold]photos"
    for kind in ("disc", "stripes"):
        (root / f"[{kind}]").mkdir(parents=True)
        for n in range(2):
            picture(kind, seed=n).save(root / f"[{kind}]" / f"{kind}{n}.jpg", quality=92)
    for name in MARKUP_NAMES:  # y[/red].jpg is a file red].jpg in a folder y[
        (root / "[disc]" / name).parent.mkdir(exist_ok=True)
        picture("noise").save(root / "[disc]" / name, quality=92)
    (root / "[disc]" / BROKEN).write_bytes(b"\xff\xd8\xff not a jpeg")
    index = tmp_path / "[i]dx.lookalike"
    result = run_cli("index", str(root), "--index", str(index), "--model", str(tiny_model), "-q", env=TERMINAL)
    assert result.returncode == 0, result.stderr
    assert f"{BROKEN}: cannot decode jpeg" in result.stdout
    assert str(index) in result.stdout
    return root, index


def assert_clean(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "MarkupError" not in result.stderr + result.stdout


def test_search_prints_markup_names_as_they_are(marked):
    root, index = marked
    query = root / "[disc]" / MARKUP_NAMES[0]
    result = run_cli("search", str(query), "--index", str(index), "-k", "3", env=TERMINAL)
    assert_clean(result)
    for name in MARKUP_NAMES:
        assert name in result.stdout, result.stdout
    assert f"like {query}" in result.stdout


def test_info_prints_the_index_folders_and_failures_as_they_are(marked):
    root, index = marked
    result = run_cli("info", "--index", str(index), env=TERMINAL)
    assert_clean(result)
    assert str(index) in result.stdout and str(root) in result.stdout and BROKEN in result.stdout


def test_dupes_prints_markup_names_as_they_are(marked):
    _, index = marked
    result = run_cli("dupes", str(index), "--exact-only", env=TERMINAL)
    assert_clean(result)
    for name in MARKUP_NAMES:
        assert name in result.stdout, result.stdout


def test_neighbours_map_and_compare_print_markup_paths_as_they_are(marked, tmp_path, tiny_model):
    root, index = marked
    out = tmp_path / "[b]n.json"
    result = run_cli("neighbours", "--index", str(index), "--out", str(out), "-k", "2", env=TERMINAL)
    assert_clean(result)
    assert str(out) in result.stdout
    paths = {item["path"] for item in json.loads(out.read_text())}
    assert {str(root / "[disc]" / name) for name in MARKUP_NAMES} <= paths
    picture_out = tmp_path / "[m]ap.png"
    result = run_cli("map", "--index", str(index), "--out", str(picture_out), "--sample", "5", env=TERMINAL)
    assert_clean(result)
    assert str(picture_out) in result.stdout
    three = [str(root / "[disc]" / name) for name in MARKUP_NAMES]
    result = run_cli("compare", *three, "--model", str(tiny_model), env=TERMINAL)
    assert_clean(result)
    for name in MARKUP_NAMES:
        assert name in result.stdout, result.stdout


def test_eval_prints_and_reports_markup_names_escaped(marked, tmp_path):
    root, index = marked
    report = tmp_path / "report"
    result = run_cli("eval", str(root), "--index", str(index), "-k", "1", "--pca", "none", "--no-timing",
                     "--report", str(report), env=TERMINAL)
    assert_clean(result)
    assert str(root) in result.stdout


def test_an_install_hint_keeps_its_brackets(tmp_path, monkeypatch, capsys):
    from lookalike import cli
    from lookalike.errors import MissingDependency

    def missing(*args, **kwargs):
        raise MissingDependency("exporting needs onnx: pip install 'lookalike[export]'")

    monkeypatch.setattr("lookalike.index.Index.open", missing)
    monkeypatch.setattr(sys, "argv", ["lookalike", "info", "--index", str(tmp_path / "x.lookalike")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 4
    assert "pip install 'lookalike[export]'" in capsys.readouterr().err


# -- non-UTF-8 names ----------------------------------------------------------------------------------------

RAW = b"caf\xe9.jpg"
RAW_BROKEN = b"br\xffoken.jpg"


@pytest.fixture
def latin1(tmp_path):
    """A folder holding files whose names are not UTF-8 (as a Latin-1 camera or an old share writes them)."""
    root = tmp_path / "photos"
    root.mkdir()
    try:
        with open(os.path.join(os.fsencode(root), RAW), "wb") as handle:
            picture("disc").save(handle, "JPEG")
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take non-UTF-8 names")
    with open(os.path.join(os.fsencode(root), RAW_BROKEN), "wb") as handle:
        handle.write(b"\xff\xd8\xff not a jpeg")
    picture("stripes").save(root / "plain.jpg")
    return root


def named(root: Path, raw: bytes) -> str:
    return os.fsdecode(os.path.join(os.fsencode(root), raw))


def test_the_index_api_stores_non_utf8_names_losslessly(latin1, tmp_path, tiny_model):
    path = tmp_path / "i.lookalike"
    with Index.open(path, model=str(tiny_model), create=True) as index:
        summary = index.add([latin1])
        assert (summary.indexed, summary.failed) == (2, 1)
        hits = index.search(named(latin1, RAW), k=1)
        assert hits[0].path == named(latin1, RAW) and os.fsencode(hits[0].path).endswith(RAW)
        assert Path(hits[0].path).is_file()  # the stored name opens the file
        assert index.similar(named(latin1, RAW), k=1)[0].path == str(latin1 / "plain.jpg")
        assert [f["path"] for f in index.info()["failures"]] == [named(latin1, RAW_BROKEN)]
    with Index.open(path) as index:  # and a re-run finds everything unchanged
        again = index.add([latin1])
        assert (again.indexed, again.unchanged, again.removed) == (0, 3, 0)
        os.remove(os.path.join(os.fsencode(latin1), RAW))
        assert index.add([latin1]).removed == 1


def raw_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command with bytes out, as a terminal or a pipe receives them."""
    return subprocess.run([sys.executable, "-m", "lookalike", *args], capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_the_cli_indexes_searches_and_lists_non_utf8_names_printed_escaped(latin1, tmp_path, tiny_model):
    index = str(tmp_path / "i.lookalike")
    shutil.copy(named(latin1, RAW), latin1 / "copy.jpg")  # a duplicate, for dupes
    result = raw_cli("index", str(latin1), "--index", index, "--model", str(tiny_model), "-q", env=TERMINAL)
    assert result.returncode == 0, result.stderr
    assert b"3 indexed, 0 unchanged, 0 removed, 1 failed" in result.stdout
    assert b"br\\xffoken.jpg" in result.stdout  # printed escaped
    assert b"Traceback" not in result.stderr

    query = named(latin1, RAW)
    table = raw_cli("search", query, "--index", index, "-k", "2", env=TERMINAL)
    assert table.returncode == 0, table.stderr
    assert b"caf\\xe9.jpg" in table.stdout and RAW not in table.stdout
    piped = raw_cli("search", query, "--index", index, "-k", "2")
    assert piped.returncode == 0, piped.stderr
    assert os.path.join(os.fsencode(latin1), RAW) in piped.stdout  # whole raw paths, for xargs
    as_json = raw_cli("search", query, "--index", index, "-k", "1", "--json")
    assert json.loads(as_json.stdout)["results"][0]["path"] == query  # lossless through JSON escapes

    info = raw_cli("info", "--index", index, env=TERMINAL)
    assert info.returncode == 0 and b"br\\xffoken.jpg" in info.stdout, info.stderr
    dupes = raw_cli("dupes", index, "--exact-only", "--csv", str(tmp_path / "d.csv"), "--report",
                    str(tmp_path / "report"), env=TERMINAL)
    assert dupes.returncode == 0, dupes.stderr
    assert b"caf\\xe9.jpg" in dupes.stdout and b"copy.jpg" in dupes.stdout
    assert RAW in (tmp_path / "d.csv").read_bytes()  # the CSV names the file exactly as on disk
    assert "caf\\xe9.jpg" in (tmp_path / "report" / "index.html").read_text()
    neighbours = raw_cli("neighbours", "--index", index, "--out", str(tmp_path / "n.csv"), "-k", "1")
    assert neighbours.returncode == 0, neighbours.stderr
    assert RAW in (tmp_path / "n.csv").read_bytes()


def test_the_server_answers_with_non_utf8_names_escaped(latin1, tmp_path, tiny_model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.server.app import create_app

    path = tmp_path / "s.lookalike"
    with Index.open(path, model=str(tiny_model), create=True) as index:
        index.add([latin1])
    with TestClient(create_app(str(path))) as client:
        found = client.get("/random", params={"n": 10})
        assert found.status_code == 200
        names = {item["path"] for item in found.json()["results"]}
        assert "photos/caf\\xe9.jpg" in names
        served = next(i for i in found.json()["results"] if i["path"] == "photos/caf\\xe9.jpg")
        assert client.get(f"/images/{served['id']}").status_code == 200


def test_eval_report_escapes_markdown_and_html_in_names(tmp_path, tiny_model):
    from lookalike.evaluation.protocol import evaluate_index
    from lookalike.evaluation.report import write_report

    root = tmp_path / "set|<b>x</b>"
    for group in ("a|b", "<img src=x onerror=alert(1)>", "*bold* [link](x.html)"):
        os.makedirs(root / group)
        for n in range(2):
            picture("disc" if "a" in group else "noise", seed=n).save(root / group / f"{n}.jpg")
    with Index.open(tmp_path / "e.lookalike", model=str(tiny_model), create=True) as index:
        index.add([root])
        result = evaluate_index(index, root, k=1, pca_dims=[], methods=False)
    page = write_report(result, tmp_path / "report").read_text()
    assert "<img" not in page and "<b>" not in page
    assert "](x.html)" not in page
    rows = [line for line in page.splitlines() if line.startswith("| a\\|b |")]
    assert len(rows) == 1, page
    assert rows[0].replace("\\|", "").count("|") == 4  # three cells: the name's | did not make a fourth


def test_a_name_holding_terminal_control_codes_is_shown_escaped_not_obeyed(tmp_path, tiny_model):
    """A file named with an escape sequence (ESC [31m turns a terminal red; others move the cursor or set the
    title) must not reach the terminal raw: it is shown as \\x1b, like undecodable bytes are."""
    root = tmp_path / "photos"
    root.mkdir()
    name = "esc\x1b[31mred\x07.jpg"
    picture("disc", seed=1).save(root / name, quality=92)
    picture("disc", seed=2).save(root / "plain.jpg", quality=92)
    index = tmp_path / "ctl.lookalike"
    assert run_cli("index", str(root), "--index", str(index), "--model", str(tiny_model), "-q").returncode == 0
    result = run_cli("search", str(root / "plain.jpg"), "--index", str(index), "-k", "2", env=TERMINAL)
    assert_clean(result)
    assert "\x1b[31m" not in result.stdout and "\x07" not in result.stdout  # (rich's own styles may be there)
    assert "esc\\x1b[31mred\\x07.jpg" in result.stdout


def test_a_file_that_failed_to_index_is_named_escaped_not_obeyed(tmp_path, tiny_model):
    """The bug: `lookalike index` listed a file that failed under its raw name (and the reason, which repeats
    it), so ESC [31m in the name of a broken file reached the terminal."""
    root = tmp_path / "photos"
    root.mkdir()
    picture("disc", seed=1).save(root / "plain.jpg", quality=92)
    (root / "bad\x1b[31mred.jpg").write_bytes(b"not a picture")
    result = run_cli("index", str(root), "--index", str(tmp_path / "x.lookalike"), "--model", str(tiny_model), "-q")
    assert_clean(result)
    assert "\x1b" not in result.stdout and "bad\\x1b[31mred.jpg" in result.stdout, result.stdout


def test_a_name_holding_a_right_to_left_override_is_shown_escaped(tmp_path, tiny_model):
    """The bug: U+202E (right-to-left override) in a name was printed raw, so "photo\\u202egpj.exe" showed as
    "photoexe.jpg" in the terminal: bidirectional controls are shown as \\u202e, like other controls."""
    root = tmp_path / "photos"
    root.mkdir()
    name = "photo\u202egpj.exe"
    picture("disc", seed=1).save(root / name, format="JPEG", quality=92)
    picture("disc", seed=2).save(root / "plain.jpg", quality=92)
    index = tmp_path / "rlo.lookalike"
    assert run_cli("index", str(root), "--index", str(index), "--model", str(tiny_model), "-q").returncode == 0
    result = run_cli("search", str(root / "plain.jpg"), "--index", str(index), "-k", "2", env=TERMINAL)
    assert_clean(result)
    assert "\u202e" not in result.stdout and "photo\\u202egpj.exe" in result.stdout, result.stdout
