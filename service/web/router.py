"""Serve the playground page at `/` and its files at `/static/<name>`, straight from the installed package.

The page is plain HTML, CSS and JavaScript: nothing to build, nothing fetched from the internet (the
Content-Security-Policy header keeps it that way), and it only calls the service's public endpoints,
so it doubles as a reference client. `HEAD` answers as `GET` without the body (uptime checkers use it).
The API reference pages (`/docs`, `/redoc`) are served the same way, by `service.web.docs`.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from service.errors import error_body

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Only same-origin assets and API calls; images may be data:/blob: URLs (dropped files, canvas snapshots).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate (ETag / Last-Modified) so an upgraded service serves its new page
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(tags=["playground"], include_in_schema=False)


def _static_files() -> dict[str, Path]:
    """The servable files, by name: a fixed list read once, so no request path ever reaches the file system."""
    if not STATIC_DIR.is_dir():
        return {}
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and not p.name.startswith(".")}


_FILES = _static_files()


def _not_found(what: str) -> Response:
    return JSONResponse(error_body(f"not found: {what}", error_type="not_found", code=404), status_code=404)


@router.api_route("/", methods=["GET", "HEAD"], summary="The playground page")
async def playground() -> Response:
    index = _FILES.get("index.html")
    if index is None:
        return _not_found("the playground page is not installed")
    return FileResponse(
        index,
        media_type="text/html; charset=utf-8",
        headers={**_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


@router.api_route("/static/{name}", methods=["GET", "HEAD"], summary="A file of the playground page")
async def static_file(name: str) -> Response:
    path = _FILES.get(name)
    if path is None:
        return _not_found(f"/static/{name}")
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type in ("application/javascript", "image/svg+xml"):
        media_type += "; charset=utf-8"
    return FileResponse(path, media_type=media_type, headers=_HEADERS)
