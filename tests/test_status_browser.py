"""A real headless Chromium reads the /status page of a collector fed by real agents logging
in to the real XMPP server: agents and checks show, a broken password shows as failing with
its reason, an attempt's waterfall opens, and no password or script reaches the page.
Screenshots go to tests/screenshots/ (ignored by git)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from devstack.fleet import Agent, Collector, collector_config, new_token, wait_for
from devstack.servers import Servers
from loginprobe.wire import collector_pb2 as pb
from tests.test_collector import Stream
from tests.test_status import HOSTILE, attempt

SHOTS = Path(__file__).parent / "screenshots"
# The flags for a headless Chromium on a CI machine as root, with no network of its own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--no-first-run", "--disable-extensions"]
LABELS = {"wifi-1": {"region": "eu-west", "carrier": "carrier-a", "network_type": "wifi"},
          "cell-1": {"region": "eu-west", "carrier": "carrier-b", "network_type": "cellular"}}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        yield b
        b.close()


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page()
    dialogs: list[str] = []

    def dialog(d: Dialog) -> None:  # an alert() would mean a script ran
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.goto(url)
    page.dialogs = dialogs  # type: ignore[attr-defined]
    return page


def test_real_agents_and_a_broken_password_in_chromium(
    servers: Servers, browser: Browser, tmp_path: Path
) -> None:
    SHOTS.mkdir(exist_ok=True)
    tokens = {name: new_token() for name in LABELS}
    check = {"name": "xmpp-alice", "url": "xmpp://alice@xmpp.test", "password_ref": "servers",
             "ca_file": str(servers.ca_file), "resolver": servers.resolver,
             "interval": "2s", "timeout": "2s", "selector": {"region": "eu-west"}}
    settings = collector_config(
        tmp_path / "c", pki=None, checks=[check],
        agents=[{"id": n, "token_sha256": tokens[n][1], "labels": labels}
                for n, labels in LABELS.items()])
    collector = Collector(tmp_path / "c", settings).start_healthy()
    os.environ["STATUS_TEST_PASSWORD"] = servers.password
    agents = [Agent(tmp_path / n, collector, token=tokens[n][0], labels=labels,
                    passwords={"servers": {"env": "STATUS_TEST_PASSWORD"}})
              for n, labels in LABELS.items()]
    url = f"http://{settings['metrics_listen']}/status"
    try:
        for agent in agents:
            agent.start()
        page = open_page(browser, url)

        def shows(*words: str) -> bool:
            page.reload()
            text = page.inner_text("body")
            return all(w in text for w in words)

        wait_for("both agents' results on the page",
                 lambda: shows("wifi-1", "cell-1", "xmpp-alice", "2/2 agents ok"), 30)
        page.screenshot(path=str(SHOTS / "status-ok.png"), full_page=True)

        servers.set_xmpp_password("alice", "changed-by-the-test")
        # One interval (2 s) plus the attempt and the batch: the page says it.
        wait_for("the broken password on the page",
                 lambda: shows("0/2 agents ok", "failing since", "auth_rejected"), 10)
        page.screenshot(path=str(SHOTS / "status-failing.png"), full_page=True)
        page.click("a:has-text(\"wifi-1\") >> nth=0")
        page.click("details >> nth=0 >> summary")
        waterfall = page.inner_text("details[open]")
        assert "FAILED auth_rejected" in waterfall and "login" in waterfall
        assert "tls" in waterfall and "dns" in waterfall
        # Its transcript, the SASL exchange shown redacted, the server's refusal as sent.
        assert "transcript" in waterfall and "not-authorized" in waterfall
        assert "(redacted)" in waterfall
        page.screenshot(path=str(SHOTS / "status-attempt.png"), full_page=True)
        html = page.content()
        assert servers.password not in html and tokens["wifi-1"][0] not in html
        assert not page.dialogs  # type: ignore[attr-defined]
    finally:
        servers.set_xmpp_password("alice", servers.password)
        for agent in agents:
            agent.stop()
        collector.stop()


def test_a_hostile_servers_script_is_text_in_chromium(
    browser: Browser, tmp_path: Path
) -> None:
    SHOTS.mkdir(exist_ok=True)
    token, digest = new_token()
    settings = collector_config(tmp_path, pki=None,
                                agents=[{"id": "a1", "token_sha256": digest}])
    collector = Collector(tmp_path / "c", settings).start_healthy()

    async def feed() -> None:
        stream = Stream(collector, token)
        await stream.open({"region": "eu-west", "carrier": "acme", "network_type": "wifi"})
        await stream.ack(pb.ConnectRequest(results=pb.ResultBatch(results=[
            attempt(1, False, f"SASL failure: {HOSTILE}")])))
        await stream.close()

    try:
        # Playwright's sync API holds this thread's event loop: the stream gets its own.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, feed()).result()
        url = f"http://{settings['metrics_listen']}/status"
        page = open_page(browser, url)
        assert HOSTILE in page.inner_text("body")  # shown, as text
        assert page.locator("script").count() == 0 and page.locator("img").count() == 0
        page.goto(url + "?check=xmpp-login&agent=a1&path=wifi")
        page.click("details >> nth=0 >> summary")
        assert HOSTILE in page.inner_text("details[open]")
        assert page.locator("script").count() == 0
        page.screenshot(path=str(SHOTS / "status-hostile.png"), full_page=True)
        assert not page.dialogs  # type: ignore[attr-defined]
    finally:
        collector.stop()
