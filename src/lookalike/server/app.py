"""The REST API and the web page: reverse image search over one index, for people and programs.

    app = create_app("photos.lookalike")      # then: uvicorn.run(app, host="127.0.0.1", port=8000)

The model and the index load once, at start-up. Requests run on FastAPI's thread pool: they decode their
uploads concurrently, share model calls through a batcher (batcher.py), and use the index (one SQLite
connection) under a lock, for the millisecond a search takes. Files are only ever served by id, for ids in the index:
no request names a path. Every error is a 4xx with a JSON body {"error": "..."} (a bug is a 500, in JSON too).

What may be served is checked when it is served (security.py has the headers and the upload reader): only
images that were indexed successfully, only below the folders that were indexed once links are resolved, and
only as the image type their bytes decode as, never as HTML or SVG. The token, when there is one, guards
everything but /health and the page itself (which asks for it), /docs and /openapi.json included, and is
checked before a byte of an upload is read.
"""

from __future__ import annotations

import io
import os
import random
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike import images
from lookalike.errors import DiskFull, IndexDamaged, LookalikeError, NotIndexed, StoreUnavailable
from lookalike.fileio import atomic_write
from lookalike.index import Hit, Index
from lookalike.search.options import Engine as Ann
from lookalike.search.options import Metric
from lookalike.server.batcher import EmbeddingBatcher
from lookalike.server.security import (
    SecurityHeaders,
    TooLarge,
    policy_for,
    read_upload,
    request_token,
    same_token,
)

PAGE = Path(__file__).with_name("page.html")
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


def _docs_assets() -> Path | None:
    """Swagger UI's files as fastapi-offline ships them (the serve extra), or None: then /docs uses a CDN."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).with_name("static")
    return folder if all((folder / name).is_file() for name in DOCS_FILES) else None


DOCS_ASSETS = _docs_assets()
THUMB = 256
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# Ids are SQLite rowids: a larger number is no id, and must not reach SQLite (OverflowError, a 500).
FileId = Annotated[int, PathParameter(ge=-(2**63), le=2**63 - 1, description="An image id, from a search result")]
QeQuery = Annotated[int | None, Query(ge=0, le=20, description="α-query expansion: search again with the "
                                     "query plus this many of its best neighbours (0: off)")]
DbaQuery = Annotated[int | None, Query(ge=0, le=20, description="Re-rank the shortlist by database-side "
                                       "augmentation with this many neighbours each (0: off, plain cosine order)")]


class Service:
    """What the app serves from: the open index, its roots, thumbnails, and a lock for the store."""

    def __init__(self, index: Index, max_upload: int):
        self.index = index
        self.max_upload = max_upload
        self.lock = threading.Lock()
        self.roots = sorted(index.roots(), key=len, reverse=True)
        self.thumbs: OrderedDict[int, bytes] = OrderedDict()
        self.thumb_folder = index.cache_dir
        self.batcher = EmbeddingBatcher(index.embedder)  # loads the model now, not on the first request
        self.workers = anyio.CapacityLimiter(4)
        # Decoded pixels held at once across uploads: four uploads that each decode to 1 GB wait their turn
        # instead of taking 4 GB (images.decode holds its share while it decodes).
        self.decode_budget = images.MemoryBudget(2 * images.MAX_DECODED_BYTES)
        with self.lock:
            if len(index):
                index.prepare_search()

    def relative(self, path: str) -> str:
        """A path below the indexed folder it is in, as shown to clients (never the machine's layout); bytes
        of a name that are not UTF-8 as \\xNN (JSON cannot carry them)."""
        for root in self.roots:
            if Path(path).is_relative_to(root):
                return images.printable(f"{Path(root).name}/{Path(path).relative_to(root).as_posix()}")
        return images.printable(Path(path).name)

    def results(self, hits, *, scored: bool = True) -> list[dict]:
        """Hits as clients see them; `stale` says "gone" or "changed" where the file is not what was indexed."""
        return [{"id": h.id, "path": self.relative(h.path), "score": round(h.score, 6) if scored else None,
                 "cosine": round(h.cosine, 6) if scored and h.cosine is not None else None,
                 "width": h.width, "height": h.height, "bytes": h.bytes, "stale": h.stale,
                 "thumbnail": f"/thumbs/{h.id}", "image": f"/images/{h.id}"} for h in hits]

    def path_of(self, file_id: int) -> str:
        """The path of an image that was indexed successfully (a failed file is never served)."""
        with self.lock:
            path = self.index.image_path(file_id)
        if path is None:
            raise ApiError(404, f"no image with id {file_id} in the index")
        return path

    def inside_roots(self, path: str, real: str) -> bool:
        """Whether `real` (a resolved path) is where the indexed `path` may lead: below an indexed folder
        once links are resolved on both sides, or, for a file indexed on its own, the file itself unlinked."""
        with self.lock:
            roots = self.index.roots()
        under = [root for root in roots if Path(path).is_relative_to(root)]
        if not under:
            return real == os.path.abspath(path)
        return any(Path(real).is_relative_to(os.path.realpath(root)) for root in under)

    def open_image(self, file_id: int) -> tuple[io.BufferedReader, str]:
        """An open file of an indexed image and its media type, checked as it is opened: resolved inside the
        indexed folders, and decodable as an image whose type is known (so never served as HTML or SVG)."""
        path = self.path_of(file_id)
        real = os.path.realpath(path)
        if not self.inside_roots(path, real):
            raise ApiError(403, f"image {file_id} leads outside the indexed folders: not served")
        try:
            handle = open(real, "rb")  # noqa: SIM115 (closed by the response, or below)
        except OSError:
            raise ApiError(404, f"image {file_id} is no longer on disk") from None
        try:
            opened = Path(f"/proc/self/fd/{handle.fileno()}")
            if opened.exists() and os.path.realpath(opened) != real:  # a link swapped in since realpath
                raise ApiError(403, f"image {file_id} leads outside the indexed folders: not served")
            media_type = images.media_type(handle)
            if media_type is None:
                raise ApiError(415, f"image {file_id} is no longer an image lookalike can serve")
            handle.seek(0)
        except BaseException:
            handle.close()
            raise
        return handle, media_type

    def thumbnail(self, file_id: int) -> bytes:
        if file_id in self.thumbs:
            self.thumbs.move_to_end(file_id)
            return self.thumbs[file_id]
        path = self.path_of(file_id)
        if not self.inside_roots(path, os.path.realpath(path)):
            raise ApiError(403, f"image {file_id} leads outside the indexed folders: not served")
        cached = Path(self.thumb_folder) / "thumbs" / f"{file_id}.jpg" if self.thumb_folder else None
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
        else:
            decoded = images.load(path, draft=(THUMB, THUMB), budget=self.decode_budget)
            if decoded.image is None:
                raise ApiError(404, f"image {file_id} cannot be read any more: {decoded.error}")
            picture = decoded.image.copy()
            picture.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=85)
            data = buffer.getvalue()
            if cached is not None:
                with suppress(OSError):  # a cache that cannot be written is only slower
                    atomic_write(cached, data)
        self.thumbs[file_id] = data
        while len(self.thumbs) > 2000:
            self.thumbs.popitem(last=False)
        return data


def create_app(index_path: str, *, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               threads: int | None = None, steps=None, qe: int | None = None,
               dba: int | None = None) -> FastAPI:
    """The app for one index. With `token`, every API call needs `Authorization: Bearer TOKEN` (or
    `?token=TOKEN`, for <img> tags that cannot send headers). `steps` hears the one-off waits of the start
    (a model's first export, an ANN index's first build; see pipeline.Steps). `qe` and `dba`: the α-query
    expansion and augmentation neighbours a search uses when it does not say (None: the library's defaults)."""
    index = Index.open(index_path, threads=threads, steps=steps)
    service = Service(index, max_upload)
    index.steps = None  # started: nothing more to tell the console
    default_qe, default_dba = qe, dba

    @asynccontextmanager
    async def lifespan(_):
        yield
        service.batcher.close()
        index.close()

    # The schema and its docs are routes of our own below, behind the token like every other API call.
    app = FastAPI(title="lookalike", summary="Reverse image search over a folder of photos",
                  version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(SecurityHeaders, max_body=max_upload)

    def authorised(request: Request) -> None:
        if token is not None and not same_token(request_token(request), token):
            raise ApiError(401, "a bearer token is required: Authorization: Bearer TOKEN")

    api = [Depends(authorised)]

    @app.exception_handler(ApiError)
    async def api_error(_, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(NotIndexed)
    async def not_indexed(_, exc: NotIndexed) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(IndexDamaged)
    @app.exception_handler(DiskFull)
    @app.exception_handler(StoreUnavailable)
    async def unavailable(_, exc: LookalikeError) -> JSONResponse:
        """The index itself cannot answer (damaged, its disk full, its backend away): not the client's fault."""
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(LookalikeError)
    async def refused(_, exc: LookalikeError) -> JSONResponse:
        """What lookalike refuses on purpose (an engine this index cannot build, an empty index) is the
        client's to change: a 400 with the one-line reason."""
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def bug(_, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__} (a bug in lookalike)"}, status_code=500)

    @app.get("/openapi.json", dependencies=api, include_in_schema=False)
    def schema() -> dict:
        return app.openapi()

    @app.get("/docs", dependencies=api, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        given = request.query_params.get("token")  # a browser's token travels in the URL to the schema too
        url = "/openapi.json" + (f"?token={quote(given, safe='')}" if given else "")
        assets: dict[str, Any] = {}
        if DOCS_ASSETS is not None:  # served from here: the docs work with no network (else from a CDN)
            assets = {"swagger_js_url": "/docs-assets/swagger-ui-bundle.js",
                      "swagger_css_url": "/docs-assets/swagger-ui.css",
                      "swagger_favicon_url": "/docs-assets/favicon.png"}
        html = bytes(get_swagger_ui_html(openapi_url=url, title="lookalike API", **assets).body).decode()
        return HTMLResponse(html, headers={"Content-Security-Policy": policy_for(html)})

    @app.get("/docs-assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> FileResponse:
        """Swagger UI's own files (no data: open without the token, as a <script src> cannot send one)."""
        if DOCS_ASSETS is None or name not in DOCS_FILES:
            raise ApiError(404, f"no such file: {name}")
        return FileResponse(DOCS_ASSETS / name, media_type=DOCS_FILES[name],
                            headers={"Cache-Control": "max-age=86400"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        html = PAGE.read_text()
        return HTMLResponse(html, headers={"Content-Security-Policy": policy_for(html)})

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

    @app.post("/search", dependencies=api, summary="The indexed images that look most like an uploaded one",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["file"], "properties": {"file": {
                      "type": "string", "format": "binary", "description": "The query image"}}}}}}})
    async def search(request: Request,
                     k: Annotated[int, Query(ge=1, le=200)] = 24,
                     metric: Metric = Metric.cosine,
                     ann: Annotated[Ann | None, Query(description="The engine, instead of the index's own")] = None,
                     qe: QeQuery = None, dba: DbaQuery = None) -> dict:
        # The body is read here, after the token was checked, with a counter: a chunked upload (no
        # Content-Length) stops being read at the limit instead of being spooled in full first.
        try:
            data = await read_upload(request, "file", max_upload)
        except TooLarge:
            raise ApiError(413, f"the image is larger than the limit of {max_upload:,} bytes") from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        if data is None:
            raise ApiError(400, "no file: send the image as multipart form field 'file'")
        if not data:
            raise ApiError(400, "the file is empty")

        def work() -> dict:
            size = index.spec.input_size
            decoded = images.decode(data, draft=(size, size), budget=service.decode_budget)
            if decoded.image is None:
                status = 413 if decoded.error.startswith("too large") else 400
                raise ApiError(status, f"not a usable image: {decoded.error}")
            vector = service.batcher.embed(index.embedder.prepare(images.to_rgb(decoded.image)))
            with service.lock:
                hits = index.search(vector, k, metric=metric.value, ann=ann.value if ann else None,
                                    qe=qe if qe is not None else default_qe,
                                    dba=dba if dba is not None else default_dba)
            return {"engine": hits.engine, "results": service.results(hits)}

        # A few threads at a time: hundreds of waiting requests queue on the event loop, cheaply, instead of
        # forty threads fighting over two cores and the GIL.
        return await anyio.to_thread.run_sync(work, limiter=service.workers)

    @app.get("/similar/{file_id}", dependencies=api, summary="The neighbours of an indexed image")
    def similar(file_id: FileId, k: Annotated[int, Query(ge=1, le=200)] = 24, metric: Metric = Metric.cosine,
                qe: QeQuery = None, dba: DbaQuery = None) -> dict:
        path = service.path_of(file_id)
        with service.lock:
            vector = index.vector_of(path)
            if vector is None:
                raise ApiError(404, f"image {file_id} has no vector (it could not be read when indexed)")
            hits = index.search(vector, k, metric=metric.value, exclude=path, qe=qe if qe is not None else default_qe,
                                dba=dba if dba is not None else default_dba)
        return {"engine": hits.engine, "query": {"id": file_id, "path": service.relative(path)},
                "results": service.results(hits)}

    @app.get("/random", dependencies=api, summary="Some indexed images at random, to start browsing")
    def random_images(n: Annotated[int, Query(ge=1, le=200)] = 24, seed: int | None = None) -> dict:
        with service.lock:
            ids = index.ids()
            chosen = random.Random(seed).sample(ids.tolist(), min(n, len(ids)))
            found = index.files(chosen)
            hits = index.check_files([Hit(n + 1, 0.0, found[i].path, i, found[i].width, found[i].height)
                                      for n, i in enumerate(i for i in chosen if i in found)])
        return {"results": service.results(hits, scored=False)}

    @app.get("/images/{file_id}", dependencies=api, summary="An indexed image, as stored")
    def image(file_id: FileId) -> StreamingResponse:
        handle, media_type = service.open_image(file_id)

        def chunks():
            with handle:
                while chunk := handle.read(256 * 1024):
                    yield chunk

        return StreamingResponse(chunks(), media_type=media_type,
                                 headers={"Content-Length": str(os.fstat(handle.fileno()).st_size)})

    @app.get("/thumbs/{file_id}", dependencies=api, summary=f"An indexed image, at most {THUMB} px")
    def thumb(file_id: FileId) -> Response:
        return Response(service.thumbnail(file_id), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=86400"})

    return app


def _version() -> str:
    from lookalike import __version__

    return __version__
