"""Integration tier: the function served by functions-framework's Flask app (test client), talking
over HTTP to an idgen stand-in on a free 127.0.0.1 port, storing into a real SQLite file."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import uuid

import functions_framework
import pytest
from recipes_testlib import (
    MAIN,
    RECIPE,
    ROOT,
    SITE_IDGEN_TIMEOUT,
    count_rows,
    csrf_token,
    field_error,
    field_value,
    form_fields,
    problem,
)
from recipesite import tracing as site_tracing
from trace_headers import TRACE_HEADERS

from idgen import tracing as idgen_tracing

XSS = "<script>alert(1)</script>"
ATTR_XSS = '"><img src=x onerror=alert(1)>'


def post_form(client, fields: dict[str, str], token: str | None = None, multipart: bool = True):
    """Submit the new-recipe form the way a browser does (the form is multipart/form-data)."""
    if token is None:
        token = csrf_token(client.get("/new").text)
    data = {**fields, "csrf_token": token} if token else dict(fields)
    if multipart:
        return client.post("/new", data=data, content_type="multipart/form-data")
    return client.post("/new", data=data, content_type="application/x-www-form-urlencoded")


def create(client, recipe: dict | None = None, **overrides):
    return client.post("/api/recipes", json={**RECIPE, **(recipe or {}), **overrides})


# --- loading ---------------------------------------------------------------------------------------


def test_loads_from_the_repository_root_with_a_relative_source(site_env, monkeypatch):
    """The README's command: functions-framework --target=recipes --source=frontend/main.py, run from
    the repository root."""
    monkeypatch.chdir(ROOT)
    app = functions_framework.create_app(target="recipes", source="frontend/main.py")
    response = app.test_client().get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("declared", ["cloudevent", "event"])
def test_the_function_declares_itself_http_with_the_decorator(site_env, monkeypatch, declared):
    """main.py registers `recipes` with @functions_framework.http, so the code, not the command line or
    the environment, says it is an HTTP function: a FUNCTION_SIGNATURE_TYPE that says otherwise loses
    (functions-framework reads the decorator's registration first)."""
    monkeypatch.setenv("FUNCTION_SIGNATURE_TYPE", declared)
    app = functions_framework.create_app(target="recipes", source=str(MAIN))
    response = app.test_client().get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})
    assert os.environ["FUNCTION_SIGNATURE_TYPE"] == "http"  # what functions-framework settled on


# --- create, view, list ----------------------------------------------------------------------------


def test_create_through_the_form_then_view(client, fake_idgen, db_path):
    response = post_form(client, form_fields())
    assert response.status_code == 303
    new_id = fake_idgen.issued[0]
    assert response.headers["Location"] == f"/recipes/{new_id}?created=1"
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    assert "Saved." in page.text and new_id in page.text
    assert "<h1>Lentil soup</h1>" in page.text
    assert "<li>200 g red lentils</li>" in page.text
    stored = client.get(f"/api/recipes/{new_id}").get_json()
    assert stored["ingredients"] == RECIPE["ingredients"]
    assert stored["steps"] == RECIPE["steps"], "CRLF from the browser is stored as LF"
    assert count_rows(db_path) == 1


def test_urlencoded_form_works_too(client, fake_idgen):
    response = post_form(client, form_fields(title="Plain form"), multipart=False)
    assert response.status_code == 303
    assert client.get(f"/api/recipes/{fake_idgen.issued[0]}").get_json()["title"] == "Plain form"


def test_create_through_the_api(client, fake_idgen, db_path):
    response = create(client)
    assert response.status_code == 201
    body = response.get_json()
    assert body["id"] == fake_idgen.issued[0]
    assert {k: body[k] for k in RECIPE} == RECIPE
    assert body["created_at"].endswith("Z")
    assert response.headers["Location"] == f"/api/recipes/{body['id']}"
    assert client.get(response.headers["Location"]).get_json() == body
    assert count_rows(db_path) == 1


def test_list_is_newest_first_paginated_with_total(client):
    ids = [create(client, title=f"Recipe {i}").get_json()["id"] for i in range(25)]
    newest_first = ids[::-1]
    first = client.get("/api/recipes").get_json()
    assert (first["total"], first["page"], first["per_page"], first["pages"]) == (25, 1, 20, 2)
    assert [r["id"] for r in first["recipes"]] == newest_first[:20]
    second = client.get("/api/recipes?page=2").get_json()
    assert [r["id"] for r in second["recipes"]] == newest_first[20:]
    small = client.get("/api/recipes?page=3&per_page=10").get_json()
    assert [r["id"] for r in small["recipes"]] == newest_first[20:]
    beyond = client.get("/api/recipes?page=9").get_json()
    assert (beyond["recipes"], beyond["total"]) == ([], 25)

    page1 = client.get("/").text
    assert "25 recipes, newest first." in page1 and "Page 1 of 2" in page1
    titles = re.findall(r'<h2><a href="/recipes/[^"]+">([^<]+)</a></h2>', page1)
    assert titles == [f"Recipe {i}" for i in range(24, 4, -1)]
    assert 'href="/?page=2"' in page1
    page2 = client.get("/?page=2").text
    assert re.findall(r'<h2><a href="/recipes/[^"]+">([^<]+)</a></h2>', page2) == [
        f"Recipe {i}" for i in range(4, -1, -1)
    ]
    assert 'href="/?page=1"' in page2 and ids[0] in page2, "the recipe ID is shown in the list"


@pytest.mark.parametrize(
    "query",
    # "²" and "①" are digits to str.isdigit() but not to int(): they once gave a 500.
    [
        *("page=0", "page=-1", "page=two", "per_page=0", "per_page=101", "page=1.5"),
        *("page=²", "page=①", "per_page=²"),
    ],
)
def test_bad_pagination_is_a_400_naming_the_parameter(client, query):
    response = client.get(f"/api/recipes?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_query"
    assert response.get_json()["message"].startswith(query.split("=")[0])
    if query.startswith("page="):
        page = client.get(f"/?{query}")
        assert page.status_code == 400 and "page: must be a whole number" in page.text


def test_empty_site_invites_the_first_recipe(client):
    page = client.get("/")
    assert page.status_code == 200 and "No recipes yet." in page.text


def test_unknown_recipe_is_404_html_or_json(client):
    page = client.get("/recipes/does-not-exist")
    assert page.status_code == 404 and page.mimetype == "text/html" and "does-not-exist" in page.text
    api = client.get("/api/recipes/does-not-exist")
    assert api.status_code == 404 and api.get_json()["error"] == "not_found"


def test_unknown_paths_and_methods(client):
    assert client.get("/nope").status_code == 404 and client.get("/nope").mimetype == "text/html"
    assert client.get("/api/nope").get_json()["error"] == "not_found"
    put = client.put("/new")
    assert (
        put.status_code == 405 and put.mimetype == "text/html" and put.headers["Allow"] == "GET, HEAD, POST"
    )
    delete = client.delete("/api/recipes")
    assert delete.status_code == 405 and delete.get_json()["error"] == "method_not_allowed"
    assert client.options("/api/recipes").status_code == 405, "no CORS preflight is ever answered"


def test_head_and_trailing_slash(client):
    head = client.head("/")
    assert head.status_code == 200 and head.data == b""
    assert client.get("/new/").status_code == 200


def test_healthz(client):
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


# --- request ID and trace headers -----------------------------------------------------------------


def site_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("how", ["api", "form"])
def test_request_id_and_trace_headers_go_on_to_idgen(client, fake_idgen, capsys, how):
    """As Istio's Bookinfo productpage does: the call to idgen carries the request's ID and trace
    context, and nothing else of the browser's (its cookies, its user agent)."""
    others = {"cookie": "theme=dark", "user-agent": "browser/1"}
    if how == "api":
        response = client.post("/api/recipes", json=RECIPE, headers={**TRACE_HEADERS, **others})
        assert response.status_code == 201
    else:
        data = {**form_fields(), "csrf_token": csrf_token(client.get("/new").text)}
        response = client.post(
            "/new", data=data, content_type="multipart/form-data", headers={**TRACE_HEADERS, **others}
        )
        assert response.status_code == 303
    (sent,) = fake_idgen.headers
    assert {name: sent.get(name) for name in TRACE_HEADERS} == TRACE_HEADERS
    assert "cookie" not in sent and sent.get("user-agent") != "browser/1"
    (line,) = [line for line in site_lines(capsys.readouterr().err) if line["method"] == "POST"]
    assert (line["request_id"], line["trace_id"], line["status"]) == (
        TRACE_HEADERS["x-request-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736",
        response.status_code,
    )


def test_a_request_without_an_id_gets_one_and_idgen_gets_the_same(client, fake_idgen, capsys):
    """The site as the edge: like Envoy, it gives a request without x-request-id a random UUID, logs
    it and sends it on; it starts no trace (no traceparent or b3 of its own)."""
    assert create(client).status_code == 201
    (sent,) = fake_idgen.headers
    assert uuid.UUID(sent["x-request-id"]).version == 4
    assert not {"traceparent", "b3", "x-b3-traceid"} & sent.keys()
    (line,) = site_lines(capsys.readouterr().err)
    assert (line["request_id"], line["trace_id"]) == (sent["x-request-id"], None)


def test_every_request_gets_one_log_line(client, capsys):
    """Errors included (a 404, a 405), each with its own ID."""
    client.get("/healthz")
    client.get("/nope")
    client.delete("/api/recipes")
    lines = site_lines(capsys.readouterr().err)
    assert [(line["method"], line["path"], line["status"], line["level"]) for line in lines] == [
        ("GET", "/healthz", 200, "info"),
        ("GET", "/nope", 404, "info"),
        ("DELETE", "/api/recipes", 405, "info"),
    ]
    assert len({line["request_id"] for line in lines}) == 3
    assert all(isinstance(line["duration_ms"], float) for line in lines)


def test_the_site_and_idgen_forward_the_same_headers():
    """Each part is deployed on its own, so each keeps its list; they must not drift apart."""
    assert site_tracing.FORWARDED == idgen_tracing.FORWARDED


# --- input rules, JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"title": ""}, "title", "required"),
        ({"title": "   "}, "title", "required"),
        ({"title": "t" * 201}, "title", "max_length"),
        ({"author": "a" * 101}, "author", "max_length"),
        ({"ingredients": []}, "ingredients", "min_items"),
        ({"ingredients": ["x"] * 101}, "ingredients", "max_items"),
        ({"ingredients": ["ok", "i" * 201]}, "ingredients[1]", "max_length"),
        ({"steps": "s" * 10_001}, "steps", "max_length"),
        ({"title": 42}, "title", "type"),
        ({"ingredients": "salt"}, "ingredients", "type"),
        ({"ingredients": ["salt", None]}, "ingredients[1]", "type"),
        ({"id": "my-own-id"}, "id", "unknown_field"),
    ],
)
def test_api_input_rules(client, db_path, overrides, field, rule):
    response = create(client, **overrides)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_input"
    assert [(f["field"], f["rule"]) for f in body["fields"]] == [(field, rule)]
    assert field in body["message"]
    assert count_rows(db_path) == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"title": "\u0000Soup"}, "title"),  # SQLite's CHECK once turned this into a 500
        ({"author": "Ada\u0000"}, "author"),
        ({"steps": "Stir.\ud800"}, "steps"),  # a lone surrogate has no UTF-8 encoding
        ({"ingredients": ["salt", "pep\u0000per"]}, "ingredients"),
    ],
)
def test_unstorable_characters_are_400_before_an_id_is_spent(client, fake_idgen, db_path, overrides, field):
    response = client.post(
        "/api/recipes",
        data=json.dumps({**RECIPE, **overrides}),  # escaped JSON, as a client library sends it
        content_type="application/json",
    )
    assert response.status_code == 400, response.text
    body = response.get_json()
    assert [(f["field"], f["rule"]) for f in body["fields"]] == [(field, "character")]
    assert "cannot be stored; remove it" in body["message"] and "U+" in body["message"]
    assert fake_idgen.calls == 0, "validated before asking idgen for an ID"
    assert count_rows(db_path) == 0


def test_form_with_a_nul_character_is_a_400_with_input_kept(client, fake_idgen, db_path):
    fields = form_fields(title="Soup\x00 of the day")
    response = post_form(client, fields)
    assert response.status_code == 400
    assert "U+0000 at position 5 cannot be stored" in field_error(response.text, "title")
    assert field_value(response.text, "author") == fields["author"]
    assert fake_idgen.calls == 0 and count_rows(db_path) == 0


def test_api_accepts_every_limit_exactly(client):
    response = create(
        client, title="t" * 200, author="a" * 100, ingredients=["i" * 200] * 100, steps="s" * 10_000
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"title": "x", ', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 20_000 + b"]" * 20_000, "not valid JSON"),
    ],
)
def test_malformed_json_is_a_400(client, db_path, body, says):
    response = client.post("/api/recipes", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == "malformed_json"
    assert says in response.get_json()["message"]
    assert count_rows(db_path) == 0


@pytest.mark.parametrize("body", [b"[]", b'"a string"', b"null", b"42"])
def test_json_that_is_not_an_object_is_a_400(client, body):
    response = client.post("/api/recipes", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["fields"][0] == {
        "field": "body",
        "rule": "type",
        "message": response.get_json()["message"],
    }


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_api_needs_application_json(client, db_path, ctype):
    # A cross-site form or no-cors fetch can send these without a preflight; they must never create.
    response = client.post("/api/recipes", data=json.dumps(RECIPE), content_type=ctype)
    assert response.status_code == 415 and response.get_json()["error"] == "unsupported_media_type"
    assert count_rows(db_path) == 0


# --- input rules, form ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"title": ""}, "title", "title: required"),
        ({"title": "t" * 201}, "title", "title: at most 200 characters (got 201)"),
        ({"author": "a" * 101}, "author", "author: at most 100 characters (got 101)"),
        ({"ingredients": " \r\n\r\n"}, "ingredients", "ingredients: at least 1 ingredient is required"),
        (
            {"ingredients": "\r\n".join(["x"] * 101)},
            "ingredients",
            "ingredients: at most 100 ingredients (got 101)",
        ),
        ({"ingredients": "ok\r\n" + "i" * 201}, "ingredients", "ingredients, line 2: at most 200 characters"),
        ({"steps": "s" * 10_001}, "steps", "steps: at most 10,000 characters (got 10,001)"),
    ],
)
def test_form_input_rules_show_next_to_the_field_and_keep_the_input(client, db_path, overrides, field, says):
    fields = form_fields(**overrides)
    response = post_form(client, fields)
    assert response.status_code == 400
    assert says in field_error(response.text, field)
    assert 'aria-invalid="true"' in re.search(
        rf'<(input|textarea) [^>]*name="{field}"[^>]*>', response.text
    ).group(0)
    assert "1 problem to fix" in problem(response.text)
    for name, typed in fields.items():
        assert field_value(response.text, name) == typed
    assert count_rows(db_path) == 0


def test_form_reports_every_problem_at_once(client):
    response = post_form(client, form_fields(title="", author="a" * 101))
    assert response.status_code == 400
    assert field_error(response.text, "title") and field_error(response.text, "author")
    assert not field_error(response.text, "steps")
    assert "2 problems to fix" in problem(response.text)


def test_form_with_too_many_parts_is_a_400_not_a_crash(client, db_path):
    token = csrf_token(client.get("/new").text)
    data = {**form_fields(), "csrf_token": token, **{f"extra{i}": "x" for i in range(30)}}
    response = client.post("/new", data=data, content_type="multipart/form-data")
    assert response.status_code == 400 and "more fields" in response.text
    assert count_rows(db_path) == 0


@pytest.mark.parametrize("ctype", ["text/plain", "application/json"])
def test_form_needs_a_form_encoding(client, ctype):
    response = client.post("/new", data="title=x", content_type=ctype)
    assert response.status_code == 415 and response.mimetype == "text/html"


# --- body size -----------------------------------------------------------------------------------


def json_of_size(size: int) -> bytes:
    body = json.dumps(RECIPE).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_body_of_exactly_64_kb_is_accepted(client):
    body = json_of_size(65536)
    assert len(body) == 65536
    assert client.post("/api/recipes", data=body, content_type="application/json").status_code == 201


def test_api_body_over_64_kb_is_413_and_nothing_is_stored(client, db_path, fake_idgen):
    response = client.post("/api/recipes", data=json_of_size(65537), content_type="application/json")
    assert response.status_code == 413 and response.get_json()["error"] == "body_too_large"
    assert fake_idgen.calls == 0 and count_rows(db_path) == 0


def test_chunked_body_over_64_kb_is_413(client, db_path):
    # No Content-Length: the size is only known while reading; gunicorn marks such streams as ended
    # by the server (wsgi.input_terminated), as set here.
    response = client.post(
        "/api/recipes",
        input_stream=io.BytesIO(json_of_size(100_000)),
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert count_rows(db_path) == 0


def test_form_over_64_kb_is_413_page(client, db_path):
    response = post_form(client, form_fields(steps="s" * 70_000))
    assert response.status_code == 413 and response.mimetype == "text/html"
    assert "more than 64 KB" in response.text
    assert count_rows(db_path) == 0


# --- escaping ------------------------------------------------------------------------------------


def test_xss_payloads_are_escaped_everywhere(client, fake_idgen):
    payload = {
        "title": XSS,
        "author": XSS + ATTR_XSS,
        "ingredients": [XSS, ATTR_XSS],
        "steps": XSS + "\n" + ATTR_XSS,
    }
    api_id = create(client, payload).get_json()["id"]
    assert post_form(client, form_fields(payload)).status_code == 303
    form_id = fake_idgen.issued[-1]
    pages = [
        client.get("/").text,
        client.get(f"/recipes/{api_id}").text,
        client.get(f"/recipes/{form_id}").text,
    ]
    for page in pages:
        assert XSS not in page and "<img" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    detail = pages[1]
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in detail
    # The JSON API returns the text as written (JSON is not HTML), with a JSON content type.
    assert client.get(f"/api/recipes/{api_id}").get_json()["title"] == XSS


def test_xss_in_a_rejected_form_is_escaped_in_the_inputs(client):
    response = post_form(client, form_fields(title=ATTR_XSS, author="a" * 101, steps=XSS + "</textarea>"))
    assert response.status_code == 400
    assert "<img" not in response.text and XSS not in response.text
    assert field_value(response.text, "title") == ATTR_XSS
    assert field_value(response.text, "steps") == (XSS + "</textarea>").replace("\r\n", "\n")


def test_pages_forbid_scripts_and_allow_only_the_inline_stylesheet(client):
    response = client.get("/")
    css = re.search(r"<style>(.*?)</style>", response.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    policy = response.headers["Content-Security-Policy"]
    assert f"style-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert "script-src" not in policy, "no script source at all: default-src 'none' covers scripts"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# --- idgen failures: nothing stored, input kept, a clear message ------------------------------------


FAILURES = [
    (
        "egress_blocked",
        502,
        "egress_blocked",
        ["egress policy", "REGISTRY_ONLY", "httpbin.org", "ServiceEntry"],
    ),
    ("upstream_error", 502, "upstream_error", ["httpbin.org answered idgen with an error"]),
    ("upstream_unreachable", 503, "upstream_unreachable", ["idgen could not connect to httpbin.org"]),
    ("upstream_timeout", 504, "upstream_timeout", ["idgen's call to httpbin.org timed out"]),
    ("garbage", 502, "bad_idgen_response", ["without an ID or an error code"]),
    ("no_code_503", 503, "idgen_unreachable", ["HTTP 503", "no healthy upstream", "Is IDGEN_URL"]),
    # The gateway's own reply (no x-envoy-upstream-service-time) is not idgen's answer.
    ("gateway_503", 503, "idgen_unreachable", ["proxy at 127.0.0.1", "server: istio-envoy", "idgen did not"]),
    ("behind_gateway_503", 503, "idgen_unreachable", ["something other than idgen", "idgen's sidecar"]),
    ("bad_id", 502, "bad_idgen_response", ["ID the site cannot use"]),
    ("hang", 504, "idgen_timeout", ["did not answer within 0.3 s"]),
]
# Each case with the site's IDGEN_TIMEOUT: the site waits all of it for an idgen that hangs, so that
# case gets a short one.
FAILURE_CASES = [
    pytest.param(*case, "0.3" if case[0] == "hang" else SITE_IDGEN_TIMEOUT, id="-".join(map(str, case[:3])))
    for case in FAILURES
]


@pytest.mark.parametrize(("mode", "status", "code", "says", "idgen_timeout"), FAILURE_CASES)
def test_idgen_failure_on_the_form_keeps_input_and_stores_nothing(
    client, fake_idgen, db_path, mode, status, code, says
):
    post_form(client, form_fields(title="Before"))  # one stored recipe, so "unchanged" is not "empty"
    fake_idgen.mode = mode
    typed = form_fields(
        {"ingredients": ["2 eggs", "<b>bold</b> butter"]}, title="Omelette & co", author="Zoë"
    )
    response = post_form(client, typed)
    assert response.status_code == status
    assert re.search(rf'role="alert" id="problem" data-code="{code}"', response.text)
    message = problem(response.text)
    assert message.startswith("The recipe was not saved.")
    for words in says:
        assert words in message
    for name, value in typed.items():
        assert field_value(response.text, name) == value, f"{name} kept as typed"
    assert csrf_token(response.text), "a fresh token: the user can submit again as is"
    assert count_rows(db_path) == 1


@pytest.mark.parametrize(("mode", "status", "code", "says", "idgen_timeout"), FAILURE_CASES)
def test_idgen_failure_on_the_api_is_the_matching_status_and_code(
    client, fake_idgen, db_path, mode, status, code, says
):
    fake_idgen.mode = mode
    response = create(client)
    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == code
    assert all(words in body["message"] for words in says)
    if mode in ("egress_blocked", "upstream_unreachable", "upstream_timeout"):
        assert body["idgen"]["error"] == code, "idgen's own answer is passed along"
    assert count_rows(db_path) == 0


def test_idgen_not_running(site_env, monkeypatch, db_path):
    from localmesh.stack.procs import free_port

    monkeypatch.setenv("IDGEN_URL", f"http://127.0.0.1:{free_port()}/id")
    client = functions_framework.create_app(target="recipes", source=str(MAIN)).test_client()
    response = create(client)
    assert response.status_code == 503 and response.get_json()["error"] == "idgen_unreachable"
    page = post_form(client, form_fields())
    assert page.status_code == 503 and "Could not connect to idgen" in problem(page.text)
    assert field_value(page.text, "title") == RECIPE["title"]
    assert count_rows(db_path) == 0


def test_a_retry_after_the_failure_succeeds(client, fake_idgen, db_path):
    fake_idgen.mode = "egress_blocked"
    failed = post_form(client, form_fields())
    fake_idgen.mode = "ok"  # the operator applied the ServiceEntry
    again = post_form(
        client,
        {name: field_value(failed.text, name) for name in ("title", "author", "ingredients", "steps")},
        token=csrf_token(failed.text),
    )
    assert again.status_code == 303
    assert count_rows(db_path) == 1


def test_duplicate_id_is_a_409_and_never_half_saved(client, fake_idgen, db_path):
    fake_idgen.mode = "dup"
    assert create(client, title="First").status_code == 201
    second = create(client, title="Second")
    assert second.status_code == 409
    assert second.get_json()["error"] == "duplicate_id" and second.get_json()["id"] == fake_idgen.fixed_id
    page = post_form(client, form_fields(title="Third"))
    assert page.status_code == 409 and "already has" in problem(page.text)
    assert field_value(page.text, "title") == "Third"
    assert count_rows(db_path) == 1
    assert client.get(f"/api/recipes/{fake_idgen.fixed_id}").get_json()["title"] == "First"


# --- CSRF ----------------------------------------------------------------------------------------


def test_form_sets_a_strict_csrf_cookie(client):
    cookie = client.get("/new").headers["Set-Cookie"]
    assert cookie.startswith("recipes_csrf=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    assert "Set-Cookie" not in client.get("/new").headers, "an existing cookie is kept (several tabs work)"


@pytest.mark.parametrize("token", ["", "1700000000.forged", "not-a-token", "².forged"])
def test_form_without_a_valid_token_is_refused_with_input_kept(client, fake_idgen, db_path, token):
    client.get("/new")
    fields = form_fields(title="Forged?")
    data = {**fields, "csrf_token": token} if token else fields
    response = client.post("/new", data=data, content_type="multipart/form-data")
    assert response.status_code == 403
    assert "security token" in problem(response.text)
    assert field_value(response.text, "title") == "Forged?"
    assert fake_idgen.calls == 0 and count_rows(db_path) == 0
    retry = client.post(
        "/new", data={**fields, "csrf_token": csrf_token(response.text)}, content_type="multipart/form-data"
    )
    assert retry.status_code == 303, "the re-rendered form carries a token that works"


def test_token_from_another_browser_is_refused(app, db_path):
    attacker, victim = app.test_client(), app.test_client()
    token = csrf_token(attacker.get("/new").text)  # the attacker can load the form for themselves...
    victim.get("/new")  # ...but the victim's browser has its own cookie
    response = victim.post(
        "/new", data={**form_fields(), "csrf_token": token}, content_type="multipart/form-data"
    )
    assert response.status_code == 403
    assert count_rows(db_path) == 0


def test_form_without_the_cookie_says_cookies_are_needed(app, db_path):
    token = csrf_token(app.test_client().get("/new").text)
    cookieless = app.test_client(use_cookies=False)
    response = cookieless.post(
        "/new", data={**form_fields(), "csrf_token": token}, content_type="multipart/form-data"
    )
    assert response.status_code == 403 and "cookie" in problem(response.text)
    assert count_rows(db_path) == 0


def test_two_instances_on_one_database_accept_each_others_tokens(site_env, db_path):
    """Two workers (or instances sharing a disk) agree on the secret kept next to the database."""
    one = functions_framework.create_app(target="recipes", source=str(MAIN)).test_client()
    two = functions_framework.create_app(target="recipes", source=str(MAIN))
    token = csrf_token(one.get("/new").text)
    cookie = one.get_cookie("recipes_csrf")
    other = two.test_client()
    other.set_cookie("recipes_csrf", cookie.value)
    response = other.post(
        "/new", data={**form_fields(), "csrf_token": token}, content_type="multipart/form-data"
    )
    assert response.status_code == 303
    assert count_rows(db_path) == 1


def test_base_path_prefixes_every_link(site_env, monkeypatch, fake_idgen):
    """Behind a front end that serves the site under /recipes and strips that prefix before calling
    the function (as the cloudfunctions.net URL does), links and the cookie keep the prefix."""
    monkeypatch.setenv("RECIPES_BASE_PATH", "/recipes")
    client = functions_framework.create_app(target="recipes", source=str(MAIN)).test_client()
    page = client.get("/new")
    assert page.status_code == 200
    assert 'action="/recipes/new"' in page.text and 'href="/recipes/api/recipes"' in page.text
    assert "Path=/recipes" in page.headers["Set-Cookie"]
    # The browser is at /recipes/new and sends the cookie; the test client, at /new, must be told to.
    client.set_cookie("recipes_csrf", client.get_cookie("recipes_csrf", path="/recipes").value)
    created = client.post(
        "/new",
        data={**form_fields(), "csrf_token": csrf_token(page.text)},
        content_type="multipart/form-data",
    )
    assert created.headers["Location"] == f"/recipes/recipes/{fake_idgen.issued[0]}?created=1"
