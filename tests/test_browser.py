"""A real browser (Debian's Chromium, driven by Playwright) uses the running app on the tiny workspace:
a share link as a fresh server's first visit, coloured context, a note seen by a second session; open
Latents, open a latent from the table, add it to steering, generate, see both columns filled, and
continue the chat in both columns."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorer.core.paths import CACHE_ENV, USER_ENV
from explorer.ui.state import DEMO_ENV, MODEL_ENV

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium on a machine without a network: no background connections, no GPU, no sandbox as root.
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(app_cache: Path, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("EXPLORER_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    users = tmp_path_factory.mktemp("user-data")
    env = {
        **os.environ,
        MODEL_ENV: str(tiny_dir),
        CACHE_ENV: str(app_cache),
        DEMO_ENV: "0",
        USER_ENV: str(users),
    }
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port)]
    command += ["--server.headless", "true", "--server.fileWatcherType", "none"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"streamlit did not start:\n{output[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_share_link_as_first_visit_shows_coloured_context_and_notes_reach_other_sessions(
    server: str,
) -> None:
    """Runs first on a fresh server: a deep link must still go through app.py's navigation."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    link = f"{server}/latent_detail?latent=5"
    note = "Fires on the request's last token; try clamping at 2x max."
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        first = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        first.set_default_timeout(TIMEOUT_MS)
        first.goto(link)
        expect(first.get_by_role("heading", name=re.compile(r"^Latent 5 of"))).to_be_visible()
        # app.py's navigation (page titles), not Streamlit's file-name list of pages/.
        expect(first.get_by_test_id("stSidebarNav").get_by_text("Prompt inspector")).to_be_visible()
        # Every token of the examples carries its activation relative to the latent's max.
        coloured = first.locator("span[title*='× max']")
        expect(coloured.first).to_be_attached()
        assert coloured.count() > 20
        expect(first.get_by_text(re.compile(r"^Group 1: "))).to_be_visible()
        # An example's inspect link opens the prompt inspector on its request, in a new tab.
        with first.context.expect_page() as opened:
            first.get_by_role("link", name="inspect", exact=True).first.click()
        inspector = opened.value
        inspector.set_default_timeout(TIMEOUT_MS)
        expect(inspector.get_by_role("heading", name="Prompt inspector")).to_be_visible()
        expect(inspector.get_by_role("textbox", name="Prompt", exact=True)).not_to_have_value("")
        expect(inspector.get_by_text("Refusal score (log-odds)")).to_be_visible()
        inspector.close()
        first.get_by_text("Star, note, lists and your label").click()
        first.get_by_role("textbox", name="Note").fill(note)
        first.get_by_role("button", name="Save note").click()
        expect(first.get_by_text("Note on latent 5 saved.")).to_be_visible()
        # Another browser session (its own cookies, its own Streamlit session) sees the note.
        second = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        second.set_default_timeout(TIMEOUT_MS)
        second.goto(link)
        second.get_by_text("Star, note, lists and your label").click()
        expect(second.get_by_role("textbox", name="Note")).to_have_value(note)
        browser.close()


def test_open_a_latent_add_it_to_steering_and_generate(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{server}/latents")
        grid = page.get_by_test_id("stDataFrame").first
        grid.wait_for()
        expect(grid.locator("canvas").first).to_be_visible()
        # The table is a canvas grid: tick the first row's selection box (left column, below the header).
        page.wait_for_timeout(1000)
        grid.scroll_into_view_if_needed()
        box = grid.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + 17, box["y"] + 53)
        page.wait_for_url(re.compile(r"/latent_detail\?.*latent=\d+"))
        heading = page.get_by_role("heading", name=re.compile(r"^Latent \d+ of"))
        expect(heading).to_be_visible()
        latent = heading.inner_text().split()[1]
        page.get_by_role("button", name="Add to steering").click()
        page.get_by_role("link", name="Open the steering playground").click()
        expect(page.get_by_role("heading", name="Steering playground")).to_be_visible()
        expect(page.get_by_text(re.compile(rf"latent {latent}$")).first).to_be_visible()
        page.get_by_role("textbox", name="Prompt", exact=True).fill("Tell me about owls.")
        page.get_by_role("button", name="Generate").click()
        verdicts = page.get_by_text("Verdict:")
        expect(verdicts).to_have_count(2, timeout=TIMEOUT_MS)
        columns = page.get_by_test_id("stColumn")
        default = columns.filter(has=page.get_by_role("heading", name="Default"))
        steered = columns.filter(has=page.get_by_role("heading", name="Steered"))
        for column in (default, steered):
            text = column.first.inner_text()
            reply = text.split("Verdict:")[0].split("\n", 1)[-1].strip()
            assert reply, text
        # The next Generate continues the chat: each column shows both turns.
        follow_up = page.get_by_role("textbox", name="Next message", exact=True)
        follow_up.fill("And what do they eat?")
        follow_up.press("Control+Enter")
        page.get_by_role("button", name="Generate").click()
        for column in (default, steered):
            expect(column.first.get_by_text("And what do they eat?")).to_be_visible(timeout=TIMEOUT_MS)
            expect(column.first.get_by_text("Tell me about owls.")).to_be_visible()
        expect(verdicts).to_have_count(2, timeout=TIMEOUT_MS)
        browser.close()
