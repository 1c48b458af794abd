"""What keeps the server from serving what it should not: headers on every response, a policy for the HTML
it makes, a token compared in constant time, and upload bodies read with a counter.

The page keeps its token in sessionStorage on this origin, so nothing served here may run as a page: every
response says `nosniff` and carries a Content-Security-Policy that allows nothing (`default-src 'none'`);
the HTML the server makes itself (the page, /docs) gets a policy naming exactly its own inline scripts and
styles by hash, computed from the HTML as served, so the page stays one file and any edit stays allowed.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncGenerator
from html.parser import HTMLParser
from urllib.parse import urlparse

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STRICT_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
MULTIPART_FRAMING = 64 * 1024  # room for boundaries and part headers around an upload of the limit


class TooLarge(Exception):
    """An upload body went past its limit while being read."""


class SecurityHeaders:
    """ASGI middleware: `nosniff`, no referrer, no framing, and the strict policy unless a route set its own,
    on every response (errors and 404s included); a body that announces more than `max_body` bytes is
    refused with 413 before a byte of it is read."""

    def __init__(self, app: ASGIApp, max_body: int):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body + MULTIPART_FRAMING:
            body = (b'{"error":"the image is larger than the limit of ' + f"{self.max_body:,}".encode()
                    + b' bytes"}')
            await send({"type": "http.response.start", "status": 413,
                        "headers": _with_headers([(b"content-type", b"application/json"),
                                                  (b"content-length", str(len(body)).encode()),
                                                  (b"connection", b"close")])})
            await send({"type": "http.response.body", "body": body})
            return

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": _with_headers(list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, guarded_send)


def _with_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    names = {name.lower() for name, _ in headers}
    extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
             (b"x-frame-options", b"DENY"), (b"cross-origin-resource-policy", b"same-origin")]
    if b"content-security-policy" not in names:
        extra.append((b"content-security-policy", STRICT_POLICY.encode()))
    return [h for h in headers if h[0].lower() not in {n for n, _ in extra}] + extra


class _Inventory(HTMLParser):
    """What an HTML document loads: inline scripts and styles (their text), and the origins of the rest."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.inline: dict[str, list[str]] = {"script": [], "style": []}
        self.origins: dict[str, set[str]] = {"script": set(), "style": set(), "img": set(), "font": set()}
        self._open: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.origins["script"].add(_origin(found["src"] or ""))
        elif tag in ("script", "style"):
            self._open, self._text = tag, []
        elif tag == "link" and found.get("href"):
            rel = (found.get("rel") or "").lower()
            kind = "style" if "stylesheet" in rel else "img" if "icon" in rel else "font" if "font" in rel else None
            if kind:
                self.origins[kind].add(_origin(found["href"] or ""))
        elif tag == "img" and found.get("src"):
            self.origins["img"].add(_origin(found["src"] or ""))

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open == tag:
            self.inline[tag].append("".join(self._text))
            self._open = None

    # Inside <script>, HTMLParser hands over entity and char references raw, as the browser hashes them.
    def handle_entityref(self, name: str) -> None:
        self.handle_data(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.handle_data(f"&#{name};")


def _origin(url: str) -> str:
    parts = urlparse(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else "'self'"


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def policy_for(html: str) -> str:
    """The Content-Security-Policy for a document this server made: its own inline scripts and styles by
    hash, the origins it loads files from, fetches to this origin only, images from here or made in the
    page (blob:, data:). Nothing else: no plugins, no framing, no form posts elsewhere, no <base>."""
    seen = _Inventory()
    seen.feed(html)
    seen.close()

    def sources(kind: str) -> str:
        listed = sorted(seen.origins[kind]) + [_digest(text) for text in seen.inline.get(kind, [])]
        return " ".join(dict.fromkeys(listed)) or "'none'"

    images = " ".join(dict.fromkeys(["'self'", "blob:", "data:", *sorted(seen.origins["img"])]))
    fonts = " ".join(dict.fromkeys(["'self'", "data:", *sorted(seen.origins["font"])]))
    return (f"{STRICT_POLICY}; script-src {sources('script')}; style-src {sources('style')}; "
            f"img-src {images}; font-src {fonts}; connect-src 'self'")


def same_token(given: str | None, expected: str) -> bool:
    """Whether a request's token is the server's, compared in constant time (no timing side channel)."""
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def request_token(request: Request) -> str | None:
    """The token a request carries: `Authorization: Bearer TOKEN`, or `?token=` for <img> tags."""
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip()
    return request.query_params.get("token")


async def limited_body(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body as it arrives, raising TooLarge as soon as more than `limit` bytes came: a chunked
    upload (no Content-Length) is never read, nor spooled, past its limit."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise TooLarge(received)
        yield chunk


async def read_upload(request: Request, field: str, limit: int) -> bytes | None:
    """The bytes of multipart form field `field`, reading at most `limit` bytes of file plus framing;
    None when the form has no such field. Raises TooLarge, or ValueError for a malformed form."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return None  # no form at all: no file
    parser = MultiPartParser(request.headers, limited_body(request, limit + MULTIPART_FRAMING), max_files=1,
                             max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ValueError(f"malformed upload: {exc.message}") from None
    try:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            return None
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(len(data))
        return data
    finally:
        await form.close()
