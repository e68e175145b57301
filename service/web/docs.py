"""The interactive API reference, `/docs` (Swagger UI) and `/redoc` (ReDoc), served wholly by the service.

FastAPI's own pages load Swagger UI and ReDoc from a public CDN, so offline (an air-gapped host, a
container run with `--network none`) they are blank. These pages are FastAPI's same HTML pointed at
copies under `/docs/assets/`, read from the installed `fastapi-offline` wheel: its files are byte for
byte the upstream releases (`swagger-ui-dist` 5.32.6 and `redoc` 2.5.3, the major versions FastAPI's
pages load), so nothing is vendored here but their licences, which the wheel omits
(`static/docs-licenses/`, served beside the scripts that point to them). No web font, no remote favicon,
and a Content-Security-Policy that keeps every load on this origin.

Like the playground these routes are public (no API key) and outside the OpenAPI schema; `/openapi.json`
itself stays FastAPI's. The app is built with `docs_url=None, redoc_url=None` and includes this router.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from service.errors import error_body

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"
LICENSES_DIR = Path(__file__).resolve().parent / "static" / "docs-licenses"

# Swagger UI and ReDoc both build their pages with inline scripts and styles (ReDoc's styled components,
# its search worker from a blob: URL, SVG icons as data: URLs); everything else is this origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}

router = APIRouter(tags=["docs"], include_in_schema=False)


def _asset_files() -> dict[str, Path]:
    """The servable files, by name: a fixed list read once, so no request path reaches the file system."""
    files: dict[str, Path] = {}
    try:
        bundled = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:  # not installed: the pages say so instead of going blank
        bundled = None
    if bundled is not None:
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            if (bundled / name).is_file():
                files[name] = bundled / name
    if LICENSES_DIR.is_dir():
        files.update({p.name: p for p in LICENSES_DIR.iterdir() if p.is_file() and not p.name.startswith(".")})
    return files


ASSETS = _asset_files()


def _not_found(what: str) -> Response:
    return JSONResponse(error_body(f"not found: {what}", error_type="not_found", code=404), status_code=404)


def _page(html: HTMLResponse) -> HTMLResponse:
    html.headers.update({**_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY})
    return html


def _missing(page: str) -> Response | None:
    needed = {"swagger": ("swagger-ui-bundle.js", "swagger-ui.css"), "redoc": ("redoc.standalone.js",)}[page]
    if all(name in ASSETS for name in needed):
        return None
    return JSONResponse(
        error_body(
            "the API reference's assets are not installed (pip install fastapi-offline)",
            error_type="not_found",
            code=404,
        ),
        status_code=404,
    )


@router.api_route(DOCS_PATH, methods=["GET", "HEAD"], summary="Swagger UI")
async def swagger_ui(request: Request) -> Response:
    if (missing := _missing("swagger")) is not None:
        return missing
    app = request.app
    root = request.scope.get("root_path", "").rstrip("/")
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url
    return _page(
        get_swagger_ui_html(
            openapi_url=root + app.openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
            oauth2_redirect_url=root + oauth2_redirect if oauth2_redirect else None,
            init_oauth=app.swagger_ui_init_oauth,
            # no online validator badge (Swagger UI would send the schema to swagger.io)
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )
    )


@router.api_route(f"{DOCS_PATH}/oauth2-redirect", methods=["GET", "HEAD"], summary="Swagger UI's OAuth2 redirect page")
async def swagger_ui_oauth2_redirect() -> Response:
    return _page(get_swagger_ui_oauth2_redirect_html())


@router.api_route(REDOC_PATH, methods=["GET", "HEAD"], summary="ReDoc")
async def redoc(request: Request) -> Response:
    if (missing := _missing("redoc")) is not None:
        return missing
    app = request.app
    root = request.scope.get("root_path", "").rstrip("/")
    return _page(
        get_redoc_html(
            openapi_url=root + app.openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon.svg",
            with_google_fonts=False,
        )
    )


@router.api_route(
    ASSETS_PATH + "/{name}", methods=["GET", "HEAD"], summary="A script, style sheet or licence of the API reference"
)
async def docs_asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        return _not_found(f"{ASSETS_PATH}/{name}")
    media_type = _MEDIA_TYPES.get(path.suffix, "text/plain; charset=utf-8")  # LICENSE, NOTICE: plain text
    return FileResponse(path, media_type=media_type, headers=_HEADERS)
