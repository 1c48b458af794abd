"""The REST API and the web page: reverse image search over one index, for people and programs.

    app = create_app("photos.lookalike")      # then: uvicorn.run(app, host="127.0.0.1", port=8000)

The model and the index load once, at start-up. Requests run on FastAPI's thread pool: they decode their
uploads concurrently, share model calls through a batcher (batcher.py), and use the index (one SQLite
connection) under a lock, for the millisecond a search takes. Files are only ever served by id, for ids in the index:
no request names a path. Every error is a 4xx with a JSON body {"error": "..."}.
"""

from __future__ import annotations

import io
import random
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike import images
from lookalike.index import Index
from lookalike.search.searcher import ENGINES
from lookalike.server.batcher import EmbeddingBatcher

PAGE = Path(__file__).with_name("page.html")
THUMB = 256
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Metric(str, Enum):  # noqa: UP042 (FastAPI validates str Enums)
    cosine = "cosine"
    euclidean = "euclidean"


Ann = Enum("Ann", {name.replace("-", "_"): name for name in ENGINES}, type=str)


class Service:
    """What the app serves from: the open index, its roots, thumbnails, and a lock for the store."""

    def __init__(self, index: Index, max_upload: int):
        self.index = index
        self.max_upload = max_upload
        self.lock = threading.Lock()
        self.roots = sorted(index.store.roots(), key=len, reverse=True)
        self.thumbs: OrderedDict[int, bytes] = OrderedDict()
        self.thumb_folder = getattr(index.searcher, "folder", None)
        self.batcher = EmbeddingBatcher(index.embedder)  # loads the model now, not on the first request
        self.workers = anyio.CapacityLimiter(4)
        with self.lock:
            if len(index):
                index.prepare_search()

    def relative(self, path: str) -> str:
        """A path below the indexed folder it is in, as shown to clients (never the machine's layout)."""
        for root in self.roots:
            if Path(path).is_relative_to(root):
                return f"{Path(root).name}/{Path(path).relative_to(root).as_posix()}"
        return Path(path).name

    def results(self, hits) -> list[dict]:
        return [{"id": h.id, "path": self.relative(h.path), "score": round(h.score, 6), "width": h.width,
                 "height": h.height, "thumbnail": f"/thumbs/{h.id}", "image": f"/images/{h.id}"} for h in hits]

    def path_of(self, file_id: int) -> str:
        with self.lock:
            found = self.index.store.files([file_id])
        if file_id not in found:
            raise ApiError(404, f"no image with id {file_id} in the index")
        return found[file_id][0]

    def thumbnail(self, file_id: int) -> bytes:
        if file_id in self.thumbs:
            self.thumbs.move_to_end(file_id)
            return self.thumbs[file_id]
        path = self.path_of(file_id)
        cached = Path(self.thumb_folder) / "thumbs" / f"{file_id}.jpg" if self.thumb_folder else None
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
        else:
            decoded = images.load(path, draft=(THUMB, THUMB))
            if decoded.image is None:
                raise ApiError(404, f"image {file_id} cannot be read any more: {decoded.error}")
            picture = decoded.image.copy()
            picture.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=85)
            data = buffer.getvalue()
            if cached is not None:
                try:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    partial = cached.with_suffix(".partial")
                    partial.write_bytes(data)
                    partial.replace(cached)
                except OSError:
                    pass
        self.thumbs[file_id] = data
        while len(self.thumbs) > 2000:
            self.thumbs.popitem(last=False)
        return data


def create_app(index_path: str, *, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               threads: int | None = None) -> FastAPI:
    """The app for one index. With `token`, every API call needs `Authorization: Bearer TOKEN` (or
    `?token=TOKEN`, for <img> tags that cannot send headers)."""
    index = Index.open(index_path, threads=threads)
    service = Service(index, max_upload)

    @asynccontextmanager
    async def lifespan(_):
        yield
        service.batcher.close()
        index.close()

    app = FastAPI(title="lookalike", summary="Reverse image search over a folder of photos",
                  version=_version(), lifespan=lifespan)
    app.state.service = service

    def authorised(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        if (given or request.query_params.get("token")) != token:
            raise ApiError(401, "a bearer token is required: Authorization: Bearer TOKEN")

    api = [Depends(authorised)]

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next):
        """An upload that announces more than the limit is refused before a byte of it is read or spooled."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload + 64 * 1024:  # room for the multipart framing
            return JSONResponse({"error": f"the image is larger than the limit of {max_upload:,} bytes"},
                                status_code=413)
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/health", summary="Is the server up")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/stats", dependencies=api, summary="What is indexed, with which model and engine")
    def stats() -> dict:
        with service.lock:
            facts = index.info()
        return {"images": facts["images"], "failed": facts["failed"], "model": facts["model"],
                "dims": facts["dims"], "precision": facts["precision"], "engine": facts["search"]["engine"],
                "max_upload_bytes": max_upload}

    @app.post("/search", dependencies=api, summary="The indexed images that look most like an uploaded one")
    async def search(file: Annotated[UploadFile | None, File(description="The query image")] = None,
                     k: Annotated[int, Query(ge=1, le=200)] = 24,
                     metric: Metric = Metric.cosine,
                     ann: Annotated[Ann | None, Query(description="The engine, instead of the index's own")] = None
                     ) -> dict:
        if file is None:
            raise ApiError(400, "no file: send the image as multipart form field 'file'")
        data = await file.read(max_upload + 1)
        if len(data) > max_upload:
            raise ApiError(413, f"the image is larger than the limit of {max_upload:,} bytes")
        if not data:
            raise ApiError(400, "the file is empty")

        def work() -> dict:
            size = index.spec.input_size
            decoded = images.decode(data, draft=(size, size))
            if decoded.image is None:
                status = 413 if decoded.error.startswith("too large") else 400
                raise ApiError(status, f"not a usable image: {decoded.error}")
            vector = service.batcher.embed(index.embedder.prepare(images.to_rgb(decoded.image)))
            with service.lock:
                hits = index.search(vector, k, metric=metric.value, ann=ann.value if ann else None)
            return {"engine": hits.engine, "results": service.results(hits)}

        # A few threads at a time: hundreds of waiting requests queue on the event loop, cheaply, instead of
        # forty threads fighting over two cores and the GIL.
        return await anyio.to_thread.run_sync(work, limiter=service.workers)

    @app.get("/similar/{file_id}", dependencies=api, summary="The neighbours of an indexed image")
    def similar(file_id: int, k: Annotated[int, Query(ge=1, le=200)] = 24, metric: Metric = Metric.cosine) -> dict:
        path = service.path_of(file_id)
        with service.lock:
            vector = index.store.vector_of(path)
            if vector is None:
                raise ApiError(404, f"image {file_id} has no vector (it could not be read when indexed)")
            hits = index.search(vector, k, metric=metric.value, exclude=path)
        return {"engine": hits.engine, "query": {"id": file_id, "path": service.relative(path)},
                "results": service.results(hits)}

    @app.get("/random", dependencies=api, summary="Some indexed images at random, to start browsing")
    def random_images(n: Annotated[int, Query(ge=1, le=200)] = 24, seed: int | None = None) -> dict:
        with service.lock:
            ids = index.store.ids()
            chosen = random.Random(seed).sample(ids.tolist(), min(n, len(ids)))
            found = index.store.files(chosen)
        results = [{"id": i, "path": service.relative(found[i][0]), "score": None, "width": found[i][1],
                    "height": found[i][2], "thumbnail": f"/thumbs/{i}", "image": f"/images/{i}"}
                   for i in chosen if i in found]
        return {"results": results}

    @app.get("/images/{file_id}", dependencies=api, summary="An indexed image, as stored")
    def image(file_id: int) -> FileResponse:
        path = service.path_of(file_id)
        if not Path(path).is_file():
            raise ApiError(404, f"image {file_id} is no longer on disk")
        return FileResponse(path)

    @app.get("/thumbs/{file_id}", dependencies=api, summary=f"An indexed image, at most {THUMB} px")
    def thumb(file_id: int) -> Response:
        return Response(service.thumbnail(file_id), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=86400"})

    return app


def _version() -> str:
    from lookalike import __version__

    return __version__
