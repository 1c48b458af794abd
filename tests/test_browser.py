"""End to end in a real browser: the real server on 127.0.0.1, the default model, real photos, headless Chromium."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lookalike import Index
from tests.conftest import CALTECH

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CALTECH.is_dir(), reason="../shared/datasets/caltech101 is not present"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]
playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")

CLASSES = ("airplanes", "watch", "pizza")
# The flags this machine's closed network needs (no background connections that would be refused).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for name in CLASSES:
        (root / name).mkdir()
        for path in sorted((CALTECH / name).iterdir())[:8]:
            shutil.copy(path, root / name / path.name)
    index_path = tmp_path_factory.mktemp("index") / "browser.lookalike"
    with Index.open(index_path, create=True) as index:
        index.add([root])
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--index", str(index_path), "--port",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"the server stopped: {process.stderr.read().decode()}")
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the server did not start in 90 s")
    yield url
    process.terminate()
    process.wait(timeout=10)


def wait_for(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression until it is true. Through DevTools (page.evaluate), not Playwright's
    wait_for_function, which evaluates strings in the page: the page's Content-Security-Policy forbids that,
    as it should."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:.0f} s: {expression}")
        page.wait_for_timeout(100)


def watch_policy(page) -> list[str]:
    """Every Content-Security-Policy violation the page reports (the page must work under its policy)."""
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text)
            if "Content Security Policy" in message.text else None)
    return refused


def test_upload_a_photo_see_its_lookalikes_then_click_one(server, tmp_path):
    query = sorted((CALTECH / "watch").iterdir())[20]  # not indexed
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS,
                                    env={"HOME": str(tmp_path)})
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        refused = watch_policy(page)
        page.goto(server)
        wait_for(page, "document.getElementById('stats').textContent.includes('24 images')")
        page.set_input_files("#file", str(query))
        page.wait_for_selector("#grid .hit")
        wait_for(page, "document.getElementById('status').textContent.includes('images like')")
        paths = page.eval_on_selector_all("#grid .hit", "cards => cards.map(c => c.title)")
        assert len(paths) == 24
        assert all(p.split("/")[1] == "watch" for p in paths[:6]), paths[:6]
        scores = [float(s) for s in page.eval_on_selector_all("#grid .score", "s => s.map(x => x.textContent)")]
        assert scores == sorted(scores, reverse=True) and 0.3 < scores[0] < 1.0
        wait_for(page, "[...document.querySelectorAll('#grid img')].slice(0, 6)"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(tmp_path / "search.png"))

        clicked = page.locator("#grid .hit").nth(0)
        clicked_id, clicked_path = clicked.get_attribute("data-id"), clicked.get_attribute("title")
        clicked.click()
        wait_for(page, f"document.getElementById('status').textContent.includes('like {clicked_path}')")
        ids = page.eval_on_selector_all("#grid .hit", "cards => cards.map(c => c.dataset.id)")
        assert clicked_id not in ids and len(ids) == 23
        paths = page.eval_on_selector_all("#grid .hit", "cards => cards.map(c => c.title)")
        assert sum(p.split("/")[1] == "watch" for p in paths[:6]) >= 5

        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                              "buffer": b"not a picture"}])
        page.wait_for_selector("#error", state="visible")
        assert "not a usable image" in page.inner_text("#error")

        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(server)
        phone.click("#random")
        phone.wait_for_selector("#grid .hit")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing sticks out sideways on a phone
        phone.screenshot(path=str(tmp_path / "phone.png"))
        browser.close()
    assert refused == []
