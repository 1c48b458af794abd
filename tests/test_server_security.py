"""The server as an attacker sees it: what /images may serve, how uploads are read, every error a 4xx JSON,
headers on every response, the token everywhere (issue 14, items 1-5)."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest
from PIL import Image

from lookalike import Index
from tests.conftest import picture

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from lookalike.server.app import create_app


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


@pytest.fixture
def tricky(tmp_path, tiny_model):
    """An index over a folder holding a broken image, a symlink out of the tree, and images whose names
    lie (a GIF called .html, a PNG called .svg)."""
    root = tmp_path / "photos"
    root.mkdir()
    picture("disc").save(root / "fine.jpg")
    (root / "broken.jpg").write_bytes(b"GIF89a<script>alert(1)</script>")
    outside = tmp_path / "secret.jpg"
    picture("noise").save(outside)
    (root / "holiday.jpg").symlink_to(outside)
    (root / "page.html").write_bytes(encoded(picture("stripes"), "GIF") + b"<script>alert(1)</script>")
    (root / "drawing.svg").write_bytes(encoded(picture("stripes", seed=2), "PNG"))
    path = tmp_path / "tricky.lookalike"
    with Index.open(path, model=str(tiny_model), create=True) as index:
        index.add([root])
        ids = {p: index.store.id_of(str(root / p)) for p in ("fine.jpg", "broken.jpg", "holiday.jpg")}
    return path, root, outside, ids


def id_for(client, name: str) -> int:
    for item in client.get("/random", params={"n": 200}).json()["results"]:
        if item["path"].endswith("/" + name):
            return item["id"]
    raise AssertionError(f"{name} not among the served images")


def test_images_serves_only_ok_rows_inside_the_roots(tricky):
    path, _, outside, ids = tricky
    with TestClient(create_app(str(path))) as client:
        assert client.get(f"/images/{ids['fine.jpg']}").status_code == 200
        failed = client.get(f"/images/{ids['broken.jpg']}")
        assert failed.status_code == 404 and "error" in failed.json()
        assert b"script" not in failed.content
        linked = client.get(f"/images/{ids['holiday.jpg']}")
        assert linked.status_code in (403, 404) and "error" in linked.json()
        assert client.get(f"/thumbs/{ids['holiday.jpg']}").status_code in (403, 404)
        assert client.get(f"/thumbs/{ids['broken.jpg']}").status_code == 404
        # A link that pointed at an image when indexed and at a secret now: still refused.
        outside.write_text("the secret")
        linked = client.get(f"/images/{ids['holiday.jpg']}")
        assert linked.status_code in (403, 404) and "the secret" not in linked.text


def test_a_file_swapped_for_something_else_after_indexing_is_not_served(tricky):
    path, root, _, ids = tricky
    with TestClient(create_app(str(path))) as client:
        (root / "fine.jpg").write_text("<html><script>alert(1)</script></html>")
        response = client.get(f"/images/{ids['fine.jpg']}")
        assert response.status_code in (404, 415) and "script" not in response.text


def test_images_are_served_with_the_type_of_their_decoded_format(tricky):
    path, *_ = tricky
    with TestClient(create_app(str(path))) as client:
        gif = client.get(f"/images/{id_for(client, 'page.html')}")
        assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
        png = client.get(f"/images/{id_for(client, 'drawing.svg')}")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        jpeg = client.get(f"/images/{id_for(client, 'fine.jpg')}")
        assert jpeg.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize("url", ["/", "/health", "/stats", "/images/1", "/images/999999", "/thumbs/x", "/nowhere",
                                 "/docs", "/openapi.json"])
def test_every_response_carries_nosniff_and_a_content_security_policy(tricky, url):
    path, *_ = tricky
    with TestClient(create_app(str(path))) as client:
        response = client.get(url)
        assert response.headers["x-content-type-options"] == "nosniff"
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy.split("script-src")[-1].split(";")[0]


def test_the_page_policy_allows_exactly_its_own_inline_script(tricky):
    import base64
    import hashlib
    import re

    path, *_ = tricky
    with TestClient(create_app(str(path))) as client:
        response = client.get("/")
        scripts = re.findall(r"<script>(.*?)</script>", response.text, re.S)
        assert scripts
        policy = response.headers["content-security-policy"]
        for script in scripts:
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy


@pytest.mark.parametrize("url", [f"/images/{2**63}", f"/thumbs/{10**30}", f"/similar/{2**64}", "/images/-5",
                                 f"/similar/{2**63 - 1}"])
def test_ids_beyond_int64_are_4xx_json(tricky, url):
    path, *_ = tricky
    with TestClient(create_app(str(path)), raise_server_exceptions=False) as client:
        response = client.get(url)
        assert 400 <= response.status_code < 500
        assert "error" in response.json()


def test_an_engine_the_index_cannot_build_is_a_4xx_json(tricky):
    path, *_ = tricky
    with TestClient(create_app(str(path)), raise_server_exceptions=False) as client:
        response = client.post("/search", params={"ann": "ivfpq"},
                               files={"file": ("q.png", encoded(picture("disc"), "PNG"), "image/png")})
        assert response.status_code == 400, response.text
        assert "IVF-PQ" in response.json()["error"]


def test_the_token_guards_docs_and_the_schema_and_is_compared_in_constant_time(tricky, monkeypatch):
    import secrets

    path, *_ = tricky
    compared = []
    real = secrets.compare_digest
    monkeypatch.setattr(secrets, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    with TestClient(create_app(str(path), token="s3cret")) as client:
        for url in ("/docs", "/openapi.json", "/redoc"):
            response = client.get(url)
            assert response.status_code in (401, 404) and "error" in response.json(), url
        assert client.get("/openapi.json", params={"token": "s3cret"}).json()["info"]["title"] == "lookalike"
        docs = client.get("/docs", params={"token": "s3cret"})
        assert docs.status_code == 200 and "/openapi.json?token=s3cret" in docs.text
        assert client.get("/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert compared


# -- uploads over a real socket: what the server reads of a chunked body --------------------------------------


class Counting:
    """ASGI wrapper: how many body bytes the app pulled from the server, and the status it answered."""

    def __init__(self, app):
        self.app, self.received, self.status = app, 0, None

    async def __call__(self, scope, receive, send):
        async def counted_receive():
            message = await receive()
            if scope["type"] == "http" and message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        async def noted_send(message):
            if message["type"] == "http.response.start":
                self.status = message["status"]
            await send(message)

        await self.app(scope, counted_receive, noted_send)


@pytest.fixture
def live(tricky):
    import uvicorn

    path, *_ = tricky
    servers = []

    def start(**options):
        app = Counting(create_app(str(path), **options))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        servers.append((server, thread))
        return app, port

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def send_chunked(port: int, total: int, headers: dict[str, str]) -> None:
    """POST /search with a multipart body of `total` bytes in chunked encoding (no Content-Length), stopping
    as soon as the server answers or hangs up."""
    import select

    boundary = "xyz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n"
    lines = ["POST /search HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked",
             f"Content-Type: multipart/form-data; boundary={boundary}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunk = b"\0" * 65536
        sent = 0
        deadline = time.monotonic() + 60
        try:
            for piece in [head] + [chunk] * (total // len(chunk)):
                if select.select([sock], [], [], 0)[0] or time.monotonic() > deadline:
                    break
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
            else:
                sock.sendall(b"0\r\n\r\n")
            sock.settimeout(20)
            sock.recv(4096)
        except OSError:
            pass  # the server hung up on a body it does not want: what we test is what it read


def test_a_chunked_upload_stops_being_read_at_the_limit(live):
    app, port = live(max_upload=1_000_000)
    send_chunked(port, 30_000_000, {})
    deadline = time.monotonic() + 20
    while app.status is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.status == 413
    assert app.received < 3_000_000


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(live):
    app, port = live(max_upload=1_000_000, token="s3cret")
    send_chunked(port, 20_000_000, {})
    deadline = time.monotonic() + 20
    while app.status is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.status == 401
    assert app.received < 512 * 1024


def test_an_authorised_chunked_upload_within_the_limit_is_searched(live, tricky):
    import http.client

    _, port = live(max_upload=1_000_000, token="s3cret")
    data = encoded(picture("disc", seed=5), "PNG")
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--xyz--\r\n")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/search?k=2", body=iter([body[:100], body[100:]]), encode_chunked=True,
                       headers={"Content-Type": "multipart/form-data; boundary=xyz",
                                "Authorization": "Bearer s3cret"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    import json

    assert len(json.loads(response.read())["results"]) == 2
