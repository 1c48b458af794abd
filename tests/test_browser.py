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
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for name in CLASSES:
        (root / name).mkdir()
        for path in sorted((CALTECH / name).iterdir())[:8]:
            shutil.copy(path, root / name / path.name)
    index_path = tmp_path_factory.mktemp("index") / "browser.lookalike"
    with Index.open(index_path, create=True) as index:
        index.add([root])
    return index_path


def serving(index_path, *options: str):
    """`lookalike serve` on a free port, as a user starts it; yields its URL, stops it afterwards."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--index", str(index_path), "--port",
                                str(port), "-q", *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


@pytest.fixture(scope="module")
def server(indexed):
    yield from serving(indexed)


@pytest.fixture(scope="module")
def guarded(indexed):
    yield from serving(indexed, "--token", "s3cret-token")


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

        upload_url = page.url
        clicked = page.locator("#grid .hit").nth(0)
        clicked_id, clicked_path = clicked.get_attribute("data-id"), clicked.get_attribute("title")
        clicked.click()  # the full-size view: the image, its whole path, its size, and "search by this"
        page.wait_for_selector("#viewer[open]")
        wait_for(page, "document.getElementById('full').complete && document.getElementById('full').naturalWidth > 0")
        assert page.inner_text("#full-path") == clicked_path
        size = page.inner_text("#full-size")
        assert " × " in size and " px" in size and ("kB" in size or "MB" in size), size
        width = int(size.split(" × ")[0])
        assert page.evaluate("document.getElementById('full').naturalWidth") == width  # the image itself, full size
        page.screenshot(path=str(tmp_path / "viewer.png"))
        page.click("#search-this")
        wait_for(page, f"document.getElementById('status').textContent.includes('like {clicked_path}')")
        assert not page.is_visible("#viewer")
        ids = page.eval_on_selector_all("#grid .hit", "cards => cards.map(c => c.dataset.id)")
        assert clicked_id not in ids and len(ids) == 23
        paths = page.eval_on_selector_all("#grid .hit", "cards => cards.map(c => c.title)")
        assert sum(p.split("/")[1] == "watch" for p in paths[:6]) >= 5
        shared = page.url
        assert f"similar={clicked_id}" in shared

        page.go_back()  # back to the upload's results, as they were
        wait_for(page, "document.getElementById('status').textContent.includes('images like image_')")
        assert page.url == upload_url or "similar=" not in page.url
        assert page.eval_on_selector_all("#grid .hit", "cards => cards.length") == 24
        page.go_forward()
        wait_for(page, f"document.getElementById('status').textContent.includes('like {clicked_path}')")

        other = browser.new_page(viewport={"width": 1280, "height": 900})  # the shared URL, in a fresh tab
        other.goto(shared)
        wait_for(other, f"document.getElementById('status').textContent.includes('like {clicked_path}')")
        assert other.eval_on_selector_all("#grid .hit", "cards => cards.map(c => c.dataset.id)") == ids
        other.close()

        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                              "buffer": b"not a picture"}])
        page.wait_for_selector("#error", state="visible")
        assert "not a usable image" in page.inner_text("#error")
        assert not page.is_visible("#query")  # no broken preview of what could not be read

        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(server)
        phone.click("#random")
        phone.wait_for_selector("#grid .hit")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing sticks out sideways on a phone
        phone.screenshot(path=str(tmp_path / "phone.png"))
        browser.close()
    assert refused == []


def test_a_server_with_a_token_asks_for_it_and_uses_it(guarded, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, env={"HOME": str(tmp_path)})
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        refused = watch_policy(page)
        page.goto(guarded)
        page.wait_for_selector("#login", state="visible")
        assert "token" in page.inner_text("#error")
        page.fill("#token", "wrong")
        page.click("#login button")
        wait_for(page, "document.getElementById('error').textContent.includes('token')")
        page.fill("#token", "s3cret-token")
        page.click("#login button")
        wait_for(page, "document.getElementById('stats').textContent.includes('24 images')")
        assert not page.is_visible("#login") and not page.is_visible("#error")
        page.click("#random")
        page.wait_for_selector("#grid .hit")
        wait_for(page, "[...document.querySelectorAll('#grid img')].slice(0, 4)"
                       ".every(i => i.complete && i.naturalWidth > 0)")  # thumbnails carry the token too
        page.locator("#grid .hit").nth(0).click()
        wait_for(page, "document.getElementById('full').complete && document.getElementById('full').naturalWidth > 0")
        assert "s3cret-token" not in page.url  # a shared URL never carries the token
        page.reload()  # the token stays for this tab
        wait_for(page, "document.getElementById('stats').textContent.includes('24 images')")
        browser.close()
    assert refused == []


def test_the_api_docs_work_offline(server, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, env={"HOME": str(tmp_path)})
        page = browser.new_page()
        refused = watch_policy(page)
        elsewhere: list[str] = []

        def only_this_server(route):
            if route.request.url.startswith(server):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_this_server)
        page.goto(server + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert "lookalike" in page.inner_text(".swagger-ui .info .title")
        page.wait_for_selector('[data-path="/similar/{file_id}"]')  # the operations, read from /openapi.json
        browser.close()
    assert elsewhere == [] and refused == []
