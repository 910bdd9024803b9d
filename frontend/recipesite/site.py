"""The recipe site: routing by (path, method) inside one HTTP function, pages and the JSON API.

A Cloud Function gets every request on one entry point (functions-framework mounts the function at
"/" and "/<path:path>" for every method), so the site routes with its own Werkzeug URL map: the same
rules Flask's routes are made of, with HEAD answered wherever GET is and the allowed methods of a 405
taken from the map.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import flask
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.formparser import FormDataParser
from werkzeug.routing import Map, Rule

from . import tracing, validation
from .body import BodyIncomplete, BodyTooLarge, body_left_unread, drain, read_limited
from .config import MAX_PER_PAGE, Settings
from .csrf import (
    COOKIE_NAME,
    MAX_AGE_S,
    CsrfSigner,
    load_or_create_secret,
    looks_like_cookie_value,
    new_cookie_value,
)
from .idgen_client import ID_RE, IdgenClient, IdgenError
from .pages import Pages
from .store import DuplicateIdError, Recipe, StorageUnavailable, open_store

log = logging.getLogger("recipes")

# Each endpoint names a Site method called with (request, **the rule's arguments). A GET rule also
# answers HEAD (Werkzeug adds it; the WSGI server drops the body). <recipe_id> is one path segment.
# merge_slashes off: "/api//recipes" is not "/api/recipes" (no redirect), as the site always answered.
ROUTES = Map(
    [
        Rule("/", methods=["GET"], endpoint="list_page"),
        Rule("/new", methods=["GET"], endpoint="form_page"),
        Rule("/new", methods=["POST"], endpoint="form_submit"),
        Rule("/recipes/<recipe_id>", methods=["GET"], endpoint="detail_page"),
        Rule("/healthz", methods=["GET"], endpoint="healthz"),
        Rule("/api/recipes", methods=["GET"], endpoint="api_list"),
        Rule("/api/recipes", methods=["POST"], endpoint="api_create"),
        Rule("/api/recipes/<recipe_id>", methods=["GET"], endpoint="api_get"),
    ],
    merge_slashes=False,
)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

CSRF_MESSAGES = {
    "missing_cookie": "The form could not be checked: your browser did not send this site's cookie. "
    "Allow cookies for this site and submit again; your input is kept below.",
    "expired": "The form was open for too long. Nothing was saved; your input is kept below, submit again.",
}
CSRF_DEFAULT = (
    "The form's security token was missing or not valid (it must come from this site's own "
    "form). Nothing was saved; your input is kept below, submit again."
)


# For users; the reason (disk full, read-only, database down) goes to the log and to /healthz.
STORAGE_MESSAGE = (
    "The site's storage is unavailable right now (storage unavailable), so nothing was read or saved. "
    "Try again in a while; the site's operators can see the reason at /healthz and in its log."
)
STORAGE_NOT_SAVED = (
    "The recipe was not saved: the site's storage is unavailable right now (storage unavailable). "
    "Submit it again in a while; the site's operators can see the reason at /healthz and in its log."
)


BODY_INCOMPLETE = (
    "The request body did not arrive in full (the connection ended, or it came too slowly). "
    "Nothing was saved; send it again."
)


class BadQuery(ValueError):
    """A query parameter (page, per_page) is not usable; the message names it."""


def _positive_int(request: flask.Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    # ASCII digits only: str.isdigit() also accepts "²" and "①", which int() then refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < 1:
        raise BadQuery(
            f"{name}: must be a whole number from 1"
            + (f" to {maximum}" if maximum else "")
            + f", got {raw[:20]!r}"
        )
    value = int(raw)
    if maximum is not None and value > maximum:
        raise BadQuery(f"{name}: must be a whole number from 1 to {maximum}, got {value}")
    return value


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(json.dumps(body, ensure_ascii=False), status, headers, mimetype="application/json")


def json_error(status: int, code: str, message: str, **extra: Any) -> flask.Response:
    return json_response({"error": code, "message": message, **extra}, status)


class Site:
    """Everything one function instance needs, built once at start (schema, secret, templates)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings.db)
        db_path = settings.db_path
        # Settings refuse a PostgreSQL URL without RECIPES_SECRET, so db_path is set when it is needed.
        secret = settings.secret or load_or_create_secret(db_path.with_name(db_path.name + ".secret"))
        if len(secret) < 16:
            raise ValueError("RECIPES_SECRET must be at least 16 characters long")
        self.csrf = CsrfSigner(secret)
        self.idgen = IdgenClient(settings.idgen_url, settings.idgen_timeout)
        self.pages = Pages(settings.base_path)

    # --- entry point -------------------------------------------------------------------------------

    def handle(self, request: flask.Request) -> flask.Response:
        started = time.perf_counter()
        tracing.ensure_request_id(request)
        path = self._local_path(request.path)
        api = path == "/api" or path.startswith("/api/") or path == "/healthz"
        try:
            response = self._route(request, path, api)
        except StorageUnavailable as err:
            log.error("storage unavailable on %s %s: %s", request.method, request.path, err.reason)
            response = (
                json_error(503, "storage_unavailable", STORAGE_MESSAGE)
                if api
                else self._error_page(503, "Storage unavailable", STORAGE_MESSAGE)
            )
        except Exception:
            # functions-framework's own 500 handler would send the exception text to the client.
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = self._internal_error(api)
        response = self._finish(request, response)
        tracing.log_request(request, response, started)
        return response

    def _internal_error(self, api: bool) -> flask.Response:
        msg = "Something went wrong on the site's side. Nothing was saved."
        if not api:
            try:
                return self._error_page(500, "Error", msg)
            except Exception:  # the templates themselves may be what failed
                log.exception("error page failed")
        return json_error(500, "internal_error", msg)

    @staticmethod
    def _local_path(path: str) -> str:
        # RECIPES_BASE_PATH only prefixes the links the site writes: the platform in front (e.g. the
        # cloudfunctions.net URL, which serves /recipes/<path> as <path>) removes the prefix itself.
        return path.rstrip("/") or "/"

    def _route(self, request: flask.Request, path: str, api: bool) -> flask.Response:
        try:
            if path.startswith("//"):  # Werkzeug strips leading slashes: "//new" would match "/new"
                raise NotFound()
            endpoint, args = ROUTES.bind("site", path_info=path).match(method=request.method)
        except MethodNotAllowed as err:
            allowed = ", ".join(sorted(err.valid_methods or ()))
            text = f"{request.method} is not allowed on {request.path}; allowed: {allowed}."
            response = (
                json_error(405, "method_not_allowed", text)
                if api
                else self._error_page(405, "Method not allowed", text)
            )
            response.headers["Allow"] = allowed
            return response
        except NotFound:
            if api:
                return json_error(404, "not_found", f"No such API path: {request.path}")
            return self._error_page(404, "Page not found", f"There is no page at {request.path}.")
        return getattr(self, endpoint)(request, **args)

    def _finish(self, request: flask.Request, response: flask.Response) -> flask.Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.mimetype == "text/html":
            response.headers["Content-Security-Policy"] = self.pages.content_security_policy
            response.headers["Referrer-Policy"] = "same-origin"
            response.headers.setdefault("Cache-Control", "no-store")
        if body_left_unread(request) and not drain(request):
            # See body.body_left_unread: a streamed response keeps functions-framework from reading
            # the rest of an oversized body into memory after we answered.
            data = response.get_data()
            response.response = iter([data])
        return response

    # --- HTML pages --------------------------------------------------------------------------------

    def _html(self, template: str, status: int = 200, **context: Any) -> flask.Response:
        return flask.Response(self.pages.render(template, **context), status, mimetype="text/html")

    def _error_page(self, status: int, title: str, message: str) -> flask.Response:
        return self._html("error.html", status, title=title, message=message)

    def list_page(self, request: flask.Request) -> flask.Response:
        try:
            page_no = _positive_int(request, "page", 1)
        except BadQuery as err:
            return self._error_page(400, "Bad page number", str(err))
        page = self.store.page(page_no, self.settings.page_size)
        return self._html("list.html", page=page)

    def detail_page(self, request: flask.Request, recipe_id: str) -> flask.Response:
        recipe = self.store.get(recipe_id) if ID_RE.match(recipe_id) else None
        if recipe is None:
            return self._error_page(404, "Recipe not found", f"There is no recipe with ID {recipe_id}.")
        return self._html("detail.html", recipe=recipe, created=request.args.get("created") == "1")

    def _form(
        self,
        request: flask.Request,
        status: int = 200,
        values: dict[str, str] | None = None,
        errors: dict[str, list[str]] | None = None,
        problem: str | None = None,
        problem_code: str | None = None,
    ) -> flask.Response:
        """The new-recipe form, with what the user typed and what went wrong, and a fresh CSRF token."""
        cookie = request.cookies.get(COOKIE_NAME)
        fresh = not looks_like_cookie_value(cookie)
        if fresh:
            cookie = new_cookie_value()
        response = self._html(
            "form.html",
            status,
            values={name: "" for name in validation.FIELDS} | (values or {}),
            errors=errors or {},
            problem=problem,
            problem_code=problem_code,
            csrf_token=self.csrf.token(cookie),
            limits=validation,
        )
        if fresh:
            secure = request.is_secure or request.headers.get("X-Forwarded-Proto", "") == "https"
            response.set_cookie(
                COOKIE_NAME,
                cookie,
                max_age=MAX_AGE_S * 2,
                path=self.settings.base_path or "/",
                httponly=True,
                samesite="Lax",
                secure=secure,
            )
        return response

    def form_page(self, request: flask.Request) -> flask.Response:
        return self._form(request)

    def form_submit(self, request: flask.Request) -> flask.Response:
        if request.mimetype not in FORM_TYPES:
            return self._error_page(
                415, "Unsupported form encoding", f"The form must be sent as {' or '.join(FORM_TYPES)}."
            )
        try:
            body = read_limited(request, self.settings.max_body)
        except BodyTooLarge:
            kb = self.settings.max_body // 1024
            return self._error_page(
                413,
                "Recipe too large",
                f"The form sent more than {kb} KB, so the site did not read it and "
                "nothing was saved. Go back in your browser to get your text back, and "
                "shorten it (steps: at most 10,000 characters).",
            )
        except BodyIncomplete:
            return self._error_page(408, "Form not received", BODY_INCOMPLETE)
        # A form carries five small fields; max_form_parts stops a body of thousands of tiny parts.
        parser = FormDataParser(max_form_memory_size=self.settings.max_body, max_form_parts=20)
        try:
            _, form, _ = parser.parse(io.BytesIO(body), request.mimetype, len(body), request.mimetype_params)
        except HTTPException:  # werkzeug refuses a multipart body with more parts than allowed
            return self._error_page(
                400,
                "Form not readable",
                "The form had more fields than the new-recipe form has. Nothing was saved.",
            )
        values = {name: form.get(name, "") for name in validation.FIELDS}
        why = self.csrf.check(request.cookies.get(COOKIE_NAME), form.get("csrf_token"))
        if why:
            log.warning("new recipe form refused: CSRF %s", why)
            return self._form(
                request, 403, values, problem=CSRF_MESSAGES.get(why, CSRF_DEFAULT), problem_code=f"csrf_{why}"
            )
        recipe = validation.from_form(values)
        if not recipe.ok:
            count = len(recipe.errors)
            return self._form(
                request,
                400,
                values,
                errors=recipe.errors_by_field(),
                problem=f"The recipe was not saved: {count} problem{'s' if count > 1 else ''} "
                "to fix, marked below.",
                problem_code="invalid_input",
            )
        try:
            stored = self._create(request, recipe)
        except IdgenError as err:
            return self._form(
                request,
                err.status,
                values,
                problem=f"The recipe was not saved. {err.message}",
                problem_code=err.code,
            )
        except DuplicateIdError as err:
            return self._form(
                request, 409, values, problem=self._duplicate_message(err), problem_code="duplicate_id"
            )
        except StorageUnavailable as err:
            log.error("recipe not saved, storage unavailable: %s", err.reason)
            return self._form(
                request,
                503,
                values,
                problem=f"{STORAGE_NOT_SAVED} Your input is kept below.",
                problem_code="storage_unavailable",
            )
        # Post/Redirect/Get: reloading the recipe page does not submit the form again.
        return flask.Response("", 303, {"Location": self.pages.url(f"/recipes/{stored.id}", created=1)})

    # --- creating (shared by form and API) ----------------------------------------------------------

    def _create(self, request: flask.Request, recipe: validation.RecipeInput) -> Recipe:
        """An ID from idgen, then one INSERT. If idgen fails, nothing at all is written."""
        try:
            new_id = self.idgen.new_id(tracing.forward_headers(request.headers))
        except IdgenError as err:
            log.warning("idgen failed: %s (status %s)", err.code, err.status)
            raise
        return self.store.add(new_id, recipe.title, recipe.author, recipe.ingredients, recipe.steps)

    @staticmethod
    def _duplicate_message(err: DuplicateIdError) -> str:
        return (
            f"The recipe was not saved: idgen returned the ID {err.recipe_id}, which another recipe "
            "already has. Nothing was changed; submit again to get a new ID."
        )

    # --- JSON API ----------------------------------------------------------------------------------

    def healthz(self, request: flask.Request) -> flask.Response:
        # Local checks only: never idgen, or a blocked egress would make the site look down. The
        # store must be readable and writable: a site that cannot save recipes is not ready.
        try:
            self.store.ping()
        except StorageUnavailable as err:
            return json_response(
                {"status": "unavailable", "error": "storage_unavailable", "message": err.reason}, 503
            )
        return json_response({"status": "ok"})

    def api_list(self, request: flask.Request) -> flask.Response:
        try:
            page_no = _positive_int(request, "page", 1)
            per_page = _positive_int(request, "per_page", self.settings.page_size, MAX_PER_PAGE)
        except BadQuery as err:
            return json_error(400, "invalid_query", str(err))
        page = self.store.page(page_no, per_page)
        return json_response(
            {
                "recipes": [r.to_json() for r in page.recipes],
                "total": page.total,
                "page": page.page,
                "per_page": page.per_page,
                "pages": page.pages,
            }
        )

    def api_get(self, request: flask.Request, recipe_id: str) -> flask.Response:
        recipe = self.store.get(recipe_id) if ID_RE.match(recipe_id) else None
        if recipe is None:
            return json_error(404, "not_found", f"No recipe with id {recipe_id!r}.")
        return json_response(recipe.to_json())

    def api_create(self, request: flask.Request) -> flask.Response:
        # No CSRF token here, by design: this endpoint only accepts Content-Type application/json, and
        # a browser cannot send that cross-site without a CORS preflight (it is not a CORS-safelisted
        # content type: https://fetch.spec.whatwg.org/#cors-safelisted-request-header). The site never
        # answers preflights (OPTIONS gets 405, no Access-Control-* headers), and HTML forms can only
        # send urlencoded, multipart or text/plain bodies, all refused with 415 below.
        if request.mimetype != "application/json":
            return json_error(
                415,
                "unsupported_media_type",
                f"POST /api/recipes needs Content-Type: application/json, got "
                f"{request.mimetype or 'none'!r}.",
            )
        try:
            body = read_limited(request, self.settings.max_body)
        except BodyTooLarge:
            return json_error(
                413,
                "body_too_large",
                f"The request body is larger than {self.settings.max_body} bytes (64 KB).",
            )
        except BodyIncomplete:
            return json_error(408, "body_incomplete", BODY_INCOMPLETE)
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as err:
            return json_error(400, "malformed_json", f"The body is not UTF-8 (byte {err.start}).")
        except json.JSONDecodeError as err:
            return json_error(
                400,
                "malformed_json",
                f"The body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}.",
            )
        except RecursionError:
            return json_error(400, "malformed_json", "The body is not valid JSON: nested too deeply.")
        recipe = validation.from_json(data)
        if not recipe.ok:
            return json_error(
                400,
                "invalid_input",
                "; ".join(e.message for e in recipe.errors),
                fields=[e.to_json() for e in recipe.errors],
            )
        try:
            stored = self._create(request, recipe)
        except IdgenError as err:
            extra = {"idgen": err.detail} if err.detail else {}
            return json_error(
                err.status,
                err.code,
                f"The recipe was not saved. {err.message}",
                answered_by=err.answered_by,
                **extra,
            )
        except DuplicateIdError as err:
            return json_error(409, "duplicate_id", self._duplicate_message(err), id=err.recipe_id)
        except StorageUnavailable as err:
            log.error("recipe not saved, storage unavailable: %s", err.reason)
            return json_error(503, "storage_unavailable", STORAGE_NOT_SAVED)
        return json_response(stored.to_json(), 201, {"Location": self.pages.url(f"/api/recipes/{stored.id}")})
