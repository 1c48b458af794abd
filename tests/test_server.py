"""The REST API with the fixture model: every route, every bad request, the token."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from lookalike import Index
from tests.conftest import picture

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from lookalike.server.app import create_app


@pytest.fixture
def served(photo_dir, tiny_model, tmp_path):
    path = tmp_path / "served.lookalike"
    with Index.open(path, model=str(tiny_model), create=True) as index:
        index.add([photo_dir])
    app = create_app(str(path), max_upload=200_000)
    with TestClient(app) as client:
        yield client, path


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def upload(client, data: bytes, name="q.png", **params):
    return client.post("/search", files={"file": (name, data, "application/octet-stream")}, params=params)


def test_health_stats_and_openapi(served):
    client, _ = served
    assert client.get("/health").json() == {"status": "ok"}
    stats = client.get("/stats").json()
    assert stats["images"] == 9 and stats["model"] == "tiny" and stats["engine"] == "exact"
    schema = client.get("/openapi.json").json()
    assert {"/search", "/similar/{file_id}", "/images/{file_id}", "/thumbs/{file_id}", "/stats",
            "/health", "/random"} <= set(schema["paths"])


def test_search_by_upload_returns_the_same_family_with_urls(served):
    client, _ = served
    response = upload(client, png_bytes(picture("stripes", seed=7)), k=3)
    assert response.status_code == 200
    body = response.json()
    assert [r["path"].split("/")[1] for r in body["results"]] == ["stripes"] * 3
    first = body["results"][0]
    assert first["path"].startswith("photos/stripes/") and first["thumbnail"] == f"/thumbs/{first['id']}"
    assert set(first) == {"id", "path", "score", "cosine", "width", "height", "thumbnail", "image", "stale", "bytes"}
    assert first["stale"] is None and first["bytes"] > 100 and 0 < first["cosine"] <= 1
    assert upload(client, png_bytes(picture("disc", seed=7)), metric="euclidean", ann="exact").status_code == 200


def test_similar_images_and_thumbnails_by_id(served):
    client, _ = served
    hit = upload(client, png_bytes(picture("noise", seed=1)), k=1).json()["results"][0]
    similar = client.get(f"/similar/{hit['id']}", params={"k": 2}).json()
    assert hit["id"] not in [r["id"] for r in similar["results"]]
    assert all("/noise/" in r["path"] for r in similar["results"])
    image = client.get(f"/images/{hit['id']}")
    assert image.status_code == 200 and len(image.content) > 100
    thumb = client.get(f"/thumbs/{hit['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as small:
        assert max(small.size) <= 256
    assert client.get(f"/thumbs/{hit['id']}").content == thumb.content  # cached
    random = client.get("/random", params={"n": 4, "seed": 3}).json()["results"]
    assert len(random) == 4 and len({r["id"] for r in random}) == 4
    assert client.get("/").status_code == 200 and "lookalike" in client.get("/").text


def bomb() -> bytes:
    """A valid PNG header claiming 100,000 x 100,000 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize("make, status, message", [
    (lambda: None, 400, "no file"),
    (lambda: b"", 400, "the file is empty"),
    (lambda: b"just some text, not an image", 400, "not a usable image"),
    (lambda: png_bytes(picture("disc"))[:200], 400, "not a usable image"),
    (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 230_000, 413, "larger than the limit"),  # read, then refused
    (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 3_000_000, 413, "larger than the limit"),  # refused unread
    (bomb, 413, "too large"),
])
def test_bad_uploads_are_4xx_json_errors(served, make, status, message):
    client, _ = served
    data = make()
    response = client.post("/search") if data is None else upload(client, data)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert client.get("/health").status_code == 200  # and the server carries on


@pytest.mark.parametrize("url, status", [
    ("/similar/999999", 404),
    ("/images/999999", 404),
    ("/thumbs/-1", 404),
    ("/images/..%2F..%2Fetc%2Fpasswd", 404),
    ("/thumbs/1;rm", 422),
    ("/images/%2e%2e/%2e%2e/etc/passwd", 404),
    ("/static/../../etc/passwd", 404),
    ("/similar/1?k=0", 422),
    ("/similar/1?metric=manhattan", 422),
    ("/random?n=100000", 422),
])
def test_unknown_ids_and_path_tricks_are_refused(served, url, status):
    client, _ = served
    response = client.get(url)
    assert response.status_code == status
    assert "error" in response.json() and "root:" not in response.text


def test_a_bad_ann_parameter(served):
    client, _ = served
    response = upload(client, png_bytes(picture("disc")), ann="scann")
    assert response.status_code == 422 and "ann" in response.json()["error"]


def test_the_token_guards_every_api_call(photo_dir, tiny_model, tmp_path):
    path = tmp_path / "guarded.lookalike"
    with Index.open(path, model=str(tiny_model), create=True) as index:
        index.add([photo_dir])
    with TestClient(create_app(str(path), token="s3cret")) as client:
        assert client.get("/stats").status_code == 401
        assert "bearer token" in client.get("/stats").json()["error"]
        assert client.get("/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        hit = client.get("/random", params={"n": 1, "token": "s3cret"}).json()["results"][0]
        assert client.get(f"/thumbs/{hit['id']}").status_code == 401
        assert client.get(f"/thumbs/{hit['id']}", params={"token": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200  # liveness stays open


def test_query_expansion_per_request(served):
    client, _ = served
    query = png_bytes(picture("disc", seed=7))
    plain = upload(client, query, k=3).json()
    expanded = upload(client, query, k=3, qe=2).json()
    assert "α-QE" not in plain["engine"] and "α-QE 2" in expanded["engine"]
    assert all("/disc/" in r["path"] for r in expanded["results"])
    hit = plain["results"][0]["id"]
    similar = client.get(f"/similar/{hit}", params={"k": 2, "qe": 2}).json()
    assert "α-QE 2" in similar["engine"] and hit not in [r["id"] for r in similar["results"]]
    assert client.get(f"/similar/{hit}", params={"qe": -1}).status_code == 422


def test_augmentation_is_on_by_default_and_off_per_request(served):
    client, _ = served
    query = png_bytes(picture("disc", seed=7))
    default = upload(client, query, k=3).json()
    plain = upload(client, query, k=3, dba=0).json()
    assert "α-DBA 2" in default["engine"] and "α-DBA" not in plain["engine"]
    hit = plain["results"][0]["id"]
    assert "α-DBA" not in client.get(f"/similar/{hit}", params={"k": 2, "dba": 0}).json()["engine"]
    assert client.get(f"/similar/{hit}", params={"dba": -1}).status_code == 422
