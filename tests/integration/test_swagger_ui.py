"""Extras: ``/api/gateway/docs`` is Swagger UI 5 (docs/extras.md), served by
the gateway from npm's ``swagger-ui-dist``, vendored unmodified with its
checksums (``gateway/static/swagger-ui/MANIFEST.json``).

The browser test clicks through the page in a real headless Chromium that may
resolve no host (``tests/integration/browser.py``), against the FastAPI
examples under uvicorn: what a FastAPI user would do on their own ``/docs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from gateway import webui
from tests.backends import free_port
from tests.integration.browser import CHROMIUM, Browser
from tests.integration.helpers import request
from tests.integration.test_extras import uvicorn_app

ROOT = Path(__file__).resolve().parents[2]
VENDORED = ROOT / "gateway" / "static" / "swagger-ui"
ASSETS = {
    "/api/gateway/docs/swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "/api/gateway/docs/swagger-ui.css": "text/css; charset=utf-8",
    "/api/gateway/docs/swagger-initializer.js": "text/javascript; charset=utf-8",
    "/api/gateway/docs/favicon-32x32.png": "image/png",
    "/api/gateway/docs/favicon-16x16.png": "image/png",
    "/api/gateway/docs/oauth2-redirect.html": "text/html; charset=utf-8",
    "/api/gateway/docs/oauth2-redirect.js": "text/javascript; charset=utf-8",
}


def test_vendored_swagger_ui_matches_its_manifest():
    """The committed Swagger UI files are swagger-ui-dist 5.x, byte for byte as
    scripts/fetch-swagger-ui recorded them (checksum and licence), licences included."""
    manifest = json.loads((VENDORED / "MANIFEST.json").read_text())
    assert manifest["package"] == "swagger-ui-dist" and manifest["version"].startswith("5.")
    assert manifest["license"] == "Apache-2.0" and manifest["integrity"].startswith("sha512-")
    on_disk = {p.name for p in VENDORED.iterdir()} - {"MANIFEST.json"}
    assert on_disk == set(manifest["sha256"])
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == digest, name
    assert {"LICENSE", "NOTICE"} <= on_disk
    script = (ROOT / "scripts" / "fetch-swagger-ui").read_text()
    assert f'VERSION = "{manifest["version"]}"' in script and f'INTEGRITY = "{manifest["integrity"]}"' in script


def test_docs_page_and_its_assets_come_from_the_gateway(gateway_factory):
    """Extras: the page and every file it loads are the gateway's own, with their content
    types; Swagger UI's files carry its version in their URL and may be cached; nothing else
    on disk is reachable under /api/gateway/docs/."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    status, headers, page = request(gw.port, "GET", "/api/gateway/docs")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert request(gw.port, "GET", "/api/gateway/docs/")[2] == page
    links = re.findall(r'(?:src|href)="([^"]*)"', page.decode())
    version = webui.swagger_ui_version()
    assert all(link.startswith("/api/gateway/docs/") for link in links), links
    assert f"/api/gateway/docs/swagger-ui-bundle.js?v={version}" in links
    for asset, ctype in ASSETS.items():
        status, headers, body = request(gw.port, "GET", asset)
        assert status == 200 and headers["Content-Type"] == ctype and body, asset
        own = asset.endswith("swagger-initializer.js")
        assert headers["Cache-Control"] == ("no-cache" if own else "public, max-age=86400"), asset
    status, _, bundle = request(gw.port, "GET", "/api/gateway/docs/swagger-ui-bundle.js?v=" + version)
    assert status == 200 and bundle == (VENDORED / "swagger-ui-bundle.js").read_bytes()
    init = request(gw.port, "GET", "/api/gateway/docs/swagger-initializer.js")[2].decode()
    assert '"/api/gateway/openapi.json"' in init and "validatorUrl: null" in init
    assert not re.search(r"https?://", init)
    for target in ("/api/gateway/docs/nope.js", "/api/gateway/docs/docs.js", "/api/gateway/docs/MANIFEST.json",
                   "/api/gateway/docs/swagger-ui/swagger-ui.css", "/api/gateway/docs/../webui.py",
                   "/api/gateway/docs/%2e%2e/webui.py", "/api/gateway/docs/swagger-ui.css/x", "/api/gateway/docsx"):
        status, _, err = request(gw.port, "GET", target)
        assert status == 404 and json.loads(err)["error"] == "not_found", target
    assert request(gw.port, "POST", "/api/gateway/docs/swagger-ui.css", body=b"")[0] == 405


needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) to test the pages",
)

# The operation block of METHOD PATH on the page.
OPBLOCK = """[...document.querySelectorAll('.opblock-{method}')]
    .find(e => e.querySelector('.opblock-summary-path').innerText.replace(/\\u200b/g, '') === '{path}')"""


def open_and_try(b: Browser, method: str, path: str) -> str:
    """Expand an operation and press "Try it out"; return the JS expression of its block."""
    block = OPBLOCK.format(method=method, path=path)
    b.wait_for(block)
    b.js(f"({block}).querySelector('.opblock-summary-control').click()")
    b.wait_for(f"({block}).querySelector('.try-out__btn')")
    b.js(f"({block}).querySelector('.try-out__btn').click()")
    b.wait_for(f"({block}).querySelector('.execute')")
    return block


def type_into(b: Browser, element: str, text: str) -> None:
    """Set a React-controlled input's value as typing would (native setter, input event), then leave it."""
    b.js(f"""(() => {{
        const el = {element};
        const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
        Object.getOwnPropertyDescriptor(proto, 'value').set.call(el, {json.dumps(text)});
        el.dispatchEvent(new Event('input', {{bubbles: true}}));
        el.dispatchEvent(new Event('change', {{bubbles: true}}));
        el.dispatchEvent(new FocusEvent('focusout', {{bubbles: true}}));  // a debounced input reports now
    }})()""")


def execute(b: Browser, block: str) -> tuple[str, str]:
    """Press Execute; return the live response's status and body as the page shows them."""
    b.js(f"({block}).querySelector('.execute').click()")
    status = b.wait_for(f"({block}).querySelector('.live-responses-table .response .response-col_status')?.innerText")
    body = b.wait_for(f"({block}).querySelector('.live-responses-table .response-col_description pre')?.innerText")
    return status.strip(), body


@needs_chromium
def test_swagger_ui_in_headless_chromium_tries_json_and_file_posts(gateway_factory, tmp_path):
    """Extras: Swagger UI renders the operations of two FastAPI services (OpenAPI 3.1), and
    try-it-out sends a JSON POST and a multipart form with a file through the gateway; the
    backends' answers appear in the page. A service that is down is named, with the reason.
    Every request the page makes goes to the gateway."""
    attachment = tmp_path / "hello.txt"
    attachment.write_bytes(b"hello from swagger ui\n")
    with uvicorn_app("examples.service1") as s1, uvicorn_app("examples.service2") as s2:
        gw = gateway_factory(GATEWAY_SERVICES="service1,service2,billing", SERVICE1_URL=s1, SERVICE2_URL=s2,
                             BILLING_URL=f"http://127.0.0.1:{free_port()}")
        assert json.loads(request(gw.port, "GET", "/api/gateway/openapi.json")[2])["openapi"].startswith("3.1")
        with Browser(tmp_path / "profile") as b:
            b.goto(f"{gw.url}/api/gateway/docs")
            b.wait_for("document.querySelectorAll('.opblock').length > 0")
            down = b.wait_for("document.querySelector('#gateway-unavailable [data-service=billing]')?.innerText")
            unavailable = b.js("[...document.querySelectorAll('#gateway-unavailable [data-service]')]"
                               ".map(e => e.dataset.service)")
            title = b.js("document.querySelector('.info .title')?.innerText")
            paths = b.js("[...document.querySelectorAll('.opblock')].map(e => "
                         "e.querySelector('.opblock-summary-method').innerText + ' ' + "
                         "e.querySelector('.opblock-summary-path').innerText.replace(/\\u200b/g, ''))")

            # A JSON POST: service1 creates an order.
            block = open_and_try(b, "post", "/api/service1/orders")
            type_into(b, f"({block}).querySelector('textarea.body-param__text')",
                      '{"item": "swagger-book", "quantity": 3}')
            json_status, json_body = execute(b, block)
            curl = b.js(f"({block}).querySelector('.curl-command')?.innerText")
            b.send("Emulation.setDeviceMetricsOverride", width=1280, height=1350, deviceScaleFactor=1, mobile=False)
            b.js(f"window.scrollTo(0, ({block}).getBoundingClientRect().top + window.scrollY - 8)")
            shot = b.screenshot()  # docs/docs.png: the request sent, its curl, the backend's answer

            # A multipart form with a file: service2 takes an attachment.
            block = open_and_try(b, "post", "/api/service2/notifications/attachments")
            type_into(b, f"({block}).querySelector('tr[data-property-name=\"to\"] input[type=text]')", "a@b.c")
            b.set_files(f"({block}).querySelector('tr[data-property-name=\"file\"] input[type=file]')", attachment)
            form_status, form_body = execute(b, block)
            requested = b.requests()
        tried = [(r["method"], r["path"], r["status"], r["service"]) for r in gw.log.access()
                 if not r["path"].startswith("/api/gateway/")]

    assert "OAS 3.1" in title
    assert unavailable == ["billing"] and "unavailable (connection refused" in down, down
    assert {"GET /api/service1/orders", "POST /api/service1/orders", "POST /api/service2/notifications/send",
            "POST /api/service2/notifications/attachments"} <= set(paths), paths
    assert json_status == "201", json_body
    created = json.loads(json_body)
    assert (created["item"], created["quantity"]) == ("swagger-book", 3)
    assert "curl -X 'POST'" in curl and "/api/service1/orders" in curl
    assert form_status == "201", form_body
    uploaded = json.loads(form_body)
    assert uploaded == {"to": "a@b.c", "filename": "hello.txt", "content_type": "text/plain",
                        "size": attachment.stat().st_size,
                        "sha256": hashlib.sha256(attachment.read_bytes()).hexdigest()}
    assert ("POST", "/api/service1/orders", 201, "service1") in tried
    assert ("POST", "/api/service2/notifications/attachments", 201, "service2") in tried
    fetched = [u for u in requested if not u.startswith("data:")]
    assert fetched and all(u.startswith(gw.url + "/") for u in fetched), fetched
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("GATEWAY_UPDATE_SCREENSHOTS"):
        (ROOT / "docs" / "docs.png").write_bytes(shot)
