"""The operator console (service/console.py + service/static/): served open at `/`, and driven in a real
browser (the system's chromium through Playwright) against a real server: chart, try-it box, live metrics,
API key. `DYNSPARSE_SCREENSHOT=docs/console.png` also writes the README's screenshot."""

import fnmatch
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from svc_live import Live, live_server

from service.console import STATIC_DIR
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NUMBER = re.compile(r"^\d+(\.\d+)?$")

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the HTTP tests below still run
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.exists(),
    reason="needs playwright (pip install -e '.[dev]') and chromium at /usr/bin/chromium (apt-get install chromium)",
)


# ---- without a browser: what the server sends


def test_page_and_assets_are_served_outside_the_schema(api: httpx.Client) -> None:
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # nothing from elsewhere
    for src in re.findall(r'(?:src|href)="(console/[^"]+)"', page.text):
        assert api.get("/" + src).status_code == 200, src
    for js in STATIC_DIR.glob("*.js"):  # browsers refuse ES modules served under any other type
        assert api.get(f"/console/{js.name}").headers["content-type"].startswith("text/javascript"), js.name
    assert api.get("/console/missing.js").json()["error_type"] == "not_found"
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths["/"]) == {"get", "post"} and not any(p.startswith("/console") for p in paths)  # POST: HF


def test_static_files_ship_as_package_data() -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service"]
    for f in STATIC_DIR.rglob("*"):
        if f.is_file():
            rel = f.relative_to(STATIC_DIR.parent).as_posix()
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in package-data"


def test_page_needs_no_key(make_settings: Callable[..., Settings]) -> None:
    with live_server(make_settings(api_key="s3cret")) as live, live.client() as c:
        assert c.get("/").status_code == 200 and c.get("/console/console.css").status_code == 200
        assert c.get("/v1/sizes").status_code == 401


# ---- in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    assert sync_playwright is not None
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Watched:
    """A page plus what it did: console errors, uncaught exceptions and every URL it requested."""

    def __init__(self, page: "Page", base: str) -> None:
        self.page, self.base = page, base
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.urls.append(r.url))

    def check_clean(self) -> None:
        # a 4xx the page handles still logs "Failed to load resource"; anything else is a bug (CSP included)
        assert [e for e in self.errors if "Failed to load resource" not in e] == []
        assert all(u.startswith((self.base + "/", "data:")) for u in self.urls), self.urls


def open_console(browser: "Browser", live: Live) -> Watched:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(20_000)
    watched = Watched(page, live.url)
    page.goto(live.url + "/")
    return watched


def submit(page: "Page", text: str) -> None:
    page.fill("#text", text)
    page.click("#submit")


def classify(live: Live, text: str, key: str | None = None, **selector: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with live.client(headers=headers) as c:
        r = c.post("/v1/classify", json={"inputs": [text], **selector})
    assert r.status_code == 200, r.text
    return r.json()


def check_answer(page: "Page", want: dict[str, Any]) -> None:
    """The answer panel shows the label, score, served sparsity and time of `want` (the API's answer)."""
    expect(page.locator("#ans-label")).to_have_text(want["results"][0]["label"])
    score = page.locator("#ans-score")
    assert float(score.get_attribute("data-value") or "nan") == pytest.approx(want["results"][0]["score"], abs=1e-5)
    expect(score).to_have_text(f"{want['results'][0]['score'] * 100:.1f}%")
    sparsity = page.locator("#ans-sparsity")
    assert float(sparsity.get_attribute("data-value") or "nan") == pytest.approx(want["sparsity"])
    expect(sparsity).to_have_text(f"{want['sparsity']:.2f}")
    assert float(page.locator("#ans-ms").get_attribute("data-value") or "0") > 0
    expect(page.locator("#ans-ms")).to_have_text(re.compile(r"^\d+(\.\d+)? ms$"))


@needs_browser
def test_chart_try_it_and_live_metrics(browser: "Browser", server: Live, api: httpx.Client) -> None:
    sizes = api.get("/v1/sizes").json()
    w = open_console(browser, server)
    page = w.page
    # the chart: one point per level, at the table's sparsities, both series; hover shows params and FLOPs
    levels = page.locator("svg.plot g.level")
    expect(levels).to_have_count(len(sizes["levels"]))
    assert [float(g.get_attribute("data-sparsity") or "nan") for g in levels.all()] == [
        lv["sparsity"] for lv in sizes["levels"]
    ]
    expect(page.locator("svg.plot .pt.latency")).to_have_count(len(sizes["levels"]))
    if sizes["metric"]:
        expect(page.locator("svg.plot .pt.metric")).to_have_count(len(sizes["levels"]))
    levels.nth(1).hover()
    tip = page.locator("#tooltip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("params")
    expect(tip).to_contain_text("FLOPs")
    expect(tip).to_contain_text(f"{sizes['levels'][1]['sparsity']:.2f}")

    # try it: move the slider (keyboard, as a user would), type, send; the answer is the API's at that sparsity
    lo = sizes["allowed"][0]
    slider = page.locator("#sparsity")
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(30):
        page.keyboard.press("ArrowRight")
    s = round(lo + 0.3, 2)
    expect(page.locator("#sparsity-value")).to_have_text(f"{s:.2f}")
    expect(page.locator("svg.plot .marker.selected")).to_have_count(1)
    text = "w2 w4 w6 w9 w10"
    submit(page, text)
    check_answer(page, classify(server, text, sparsity=s))
    expect(page.locator("svg.plot .marker.served")).to_have_count(1)

    # live figures: requests/s (needs two polls), queue depth, and p50/p99 for the size just served
    row = page.locator(f'#m-sizes tr[data-size="{s:.2f}"]')
    expect(row.locator("td.p50")).to_have_text(re.compile(r"\d ms$"))
    expect(row.locator("td.p99")).to_have_text(re.compile(r"\d ms$"))
    expect(page.locator("#m-queue")).to_have_text(NUMBER)
    expect(page.locator("#m-total")).to_have_text(NUMBER)
    expect(page.locator("#m-rps")).to_have_text(NUMBER, timeout=15_000)
    expect(page.locator("#status")).to_have_class(re.compile(r"\bup\b"))
    shot = os.environ.get("DYNSPARSE_SCREENSHOT")
    if shot:  # the README's picture: an answer shown, metrics filled in, a tooltip open
        levels.last.hover()
        page.screenshot(path=str(ROOT / shot), full_page=True)
    w.check_clean()


@needs_browser
def test_named_size_budget_and_errors(browser: "Browser", server: Live, api: httpx.Client) -> None:
    sizes = api.get("/v1/sizes").json()
    page = (w := open_console(browser, server)).page
    expect(page.locator("svg.plot g.level")).to_have_count(len(sizes["levels"]))
    name, s = max(sizes["sizes"].items(), key=lambda kv: kv[1])
    page.click('#mode button[data-mode="size"]')
    page.select_option("#size", name)
    submit(page, "w1 w3")
    check_answer(page, classify(server, "w1 w3", size=name))
    expect(page.locator("#answer")).to_contain_text(name)

    page.click('#mode button[data-mode="budget"]')
    page.fill("#budget", "10000")  # everything fits: the densest allowed size
    submit(page, "w5 w7")
    check_answer(page, classify(server, "w5 w7", latency_budget_ms=10000.0))
    expect(page.locator("#ans-sparsity")).to_have_text(f"{sizes['allowed'][0]:.2f}")
    expect(page.locator("#answer")).to_contain_text("latency budget met")

    submit(page, "   ")  # the server's 422, shown as a message
    error = page.locator("#try-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("text must not be empty")
    expect(error).to_contain_text("422 validation")
    expect(page.locator("#answer")).to_be_hidden()
    w.check_clean()


@needs_browser
def test_api_key(browser: "Browser", make_settings: Callable[..., Settings]) -> None:
    with live_server(make_settings(api_key="s3cret")) as live:
        page = (w := open_console(browser, live)).page
        message = page.locator("#key-message")  # the page loads; the level table asks for the key
        expect(message).to_contain_text("needs an API key")
        expect(message).to_contain_text("401 unauthorized")
        expect(page.locator("#api-key")).to_be_visible()
        submit(page, "w2 w4")
        expect(page.locator("#try-error")).to_contain_text("needs an API key")

        page.fill("#api-key", "wrong")
        page.click("#key-form button[type=submit]")
        expect(message).to_contain_text("API key refused")
        expect(message).to_contain_text("wrong API key")

        page.fill("#api-key", "s3cret")
        page.click("#key-form button[type=submit]")
        expect(page.locator("svg.plot g.level")).not_to_have_count(0)
        expect(message).to_be_hidden()
        page.locator("#sparsity").fill("0.5")
        submit(page, "w2 w4")
        check_answer(page, classify(live, "w2 w4", key="s3cret", sparsity=0.5))
        assert page.evaluate("sessionStorage.getItem('dynsparse.apiKey')") == "s3cret"
        page.reload()  # the key stays for the tab's session
        expect(page.locator("svg.plot g.level")).not_to_have_count(0)
        expect(message).to_be_hidden()
        w.check_clean()


@needs_browser
def test_the_try_it_box_follows_the_checkpoints_task(
    browser: "Browser", make_settings: Callable[..., Settings], ner_ckpt: Path, qa_ckpt: Path
) -> None:
    """A token tagger offers Tokens (entities marked in the text) and Embed; a reader offers Answer, with a
    question box, and marks the answer in its context. Both answer as the API does."""
    buttons = '#task button[data-task="{}"]'
    with live_server(make_settings(checkpoint=ner_ckpt)) as live, live.client() as api:
        page = (w := open_console(browser, live)).page
        expect(page.locator(buttons.format("tokens"))).to_have_class(re.compile(r"\bon\b"))
        for task, visible in (("classify", False), ("answer", False), ("embed", True)):
            expect(page.locator(buttons.format(task))).to_be_visible(visible=visible)
        expect(page.locator("#question")).to_be_hidden()
        text = "w1 w8 w10  w3 w12"
        page.locator("#sparsity").fill("0.5")
        submit(page, text)
        (want,) = api.post("/v1/tokens", json={"inputs": [text], "sparsity": 0.5}).json()["results"]
        marks = page.locator("#ans-marked mark")
        expect(marks).to_have_count(len(want))
        for mark, e in zip(marks.all(), want, strict=True):
            assert mark.get_attribute("data-label") == e["entity_group"]
            assert mark.get_attribute("data-start") == str(e["start"])
            expect(mark).to_have_text(e["word"] + e["entity_group"])  # the words, then their tag
        expect(page.locator("#ans-marked")).to_contain_text("w1")  # the untagged text is there too
        page.click(buttons.format("embed"))
        submit(page, text)
        expect(page.locator("#ans-label")).to_have_text("embedding")
        w.check_clean()

    with live_server(make_settings(checkpoint=qa_ckpt)) as live, live.client() as api:
        page = (w := open_console(browser, live)).page
        expect(page.locator(buttons.format("answer"))).to_have_class(re.compile(r"\bon\b"))
        expect(page.locator(buttons.format("tokens"))).to_be_hidden()
        context = "w5 w7 w97 w11 w30"
        page.fill("#question", "w1 w2")
        page.locator("#sparsity").fill("0.5")
        submit(page, context)
        body = {"inputs": [{"question": "w1 w2", "context": context}], "sparsity": 0.5}
        (want,) = api.post("/v1/answer", json=body).json()["results"]
        expect(page.locator("#ans-label")).to_have_text(want["answer"])
        expect(page.locator("#ans-score")).to_have_text(f"{want['score'] * 100:.1f}%")
        expect(page.locator("#ans-marked mark")).to_have_text(want["answer"])
        expect(page.locator("#ans-marked")).to_have_text(context)
        w.check_clean()
