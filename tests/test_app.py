"""The dashboard in a real browser: ``solara run abm/app.py`` on 127.0.0.1, headless Chromium.

The test serves the app as a user would, opens it in Debian's Chromium through Playwright
(every request that is not to the loopback address is blocked: Solara's page would load a
frame from the internet), steps the model and checks that every plot changed, then moves the
tariff lever, rebuilds the model and checks that the price plot differs from the run without
the tariff at the same month. Plots are compared by the SHA-256 of their PNG bytes.

Needs ``/usr/bin/chromium`` and Solara's front-end files in its asset cache; ``make test``
installs both (``scripts/setup.sh``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, sync_playwright

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOOPBACK = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/|^(data|blob):")
SERVER_START_S = 90  # solara imports mesa, matplotlib and builds the model: ~10 s here
RENDER_S = 60  # a step re-renders four matplotlib figures: ~2 s here


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve the dashboard with ``solara run`` on a free loopback port; stop it afterwards."""
    assert CHROMIUM.exists(), "no /usr/bin/chromium: run `make setup` (apt-get install chromium)"
    cache = Path(sys.prefix) / "share" / "solara" / "cdn"
    assert any(cache.glob("requirejs@*")), (
        f"Solara's asset cache {cache} is empty: run `.venv/bin/python scripts/solara_assets.py`"
    )
    port = _free_port()
    log = tmp_path_factory.mktemp("solara") / "server.log"
    env = {**os.environ, "MPLBACKEND": "Agg", "SOLARA_TELEMETRY_MIXPANEL_ENABLE": "false"}
    solara = Path(sys.executable).parent / "solara"
    command = [str(solara), "run", "abm/app.py", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(
            [*command, "--production", "--no-open"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"solara run exited with {server.returncode}:\n{log.read_text()}")
            try:
                with _DIRECT.open(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"solara run did not answer in {SERVER_START_S} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


def _loopback_only(route: Route) -> None:
    if LOOPBACK.match(route.request.url):
        route.continue_()
    else:
        route.abort()


_DIGESTS_JS = """
async images => Promise.all(images.map(async image => {
    try {
        const bytes = await (await fetch(image.src)).arrayBuffer();
        const digest = await crypto.subtle.digest("SHA-256", bytes);
        return Array.from(new Uint8Array(digest), b => b.toString(16).padStart(2, "0")).join("");
    } catch (error) {
        return null;  // the image was replaced (its blob URL revoked) while being read
    }
}))
"""


def _plot_digests(page: Page) -> list[str | None]:
    """SHA-256 of each plot's image, in the grid's order (None: being replaced)."""
    return page.eval_on_selector_all(".vue-grid-item img", _DIGESTS_JS)


def _wait_for_plots(page: Page, count: int, differ_from: list[str] | None = None) -> list[str]:
    """Wait until ``count`` plots are shown (and, if given, all differ from ``differ_from``)."""
    deadline = time.monotonic() + RENDER_S
    while True:
        digests = _plot_digests(page) if page.locator(".vue-grid-item img").count() else []
        ready = len(digests) == count and None not in digests
        if ready and differ_from is not None:
            ready = all(new != old for new, old in zip(digests, differ_from, strict=True))
        if ready:
            return digests
        if time.monotonic() > deadline:
            page.screenshot(path=str(REPO / "runs" / "test_app_failure.png"), full_page=True)
            raise AssertionError(f"plots did not update in {RENDER_S} s (screenshot in runs/)")
        time.sleep(0.5)


def _step(page: Page, before: list[str]) -> list[str]:
    page.get_by_role("button", name="Step").click()
    return _wait_for_plots(page, len(before), differ_from=before)


def test_a_lever_and_a_step_change_the_plots(dashboard_url: str) -> None:
    plots_on_page_0 = 4  # prices, dependency, shortage, trade map (and a text card)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.route("**/*", _loopback_only)
            page.goto(dashboard_url)
            page.get_by_role("button", name="Step").wait_for(timeout=RENDER_S * 1000)
            start = _wait_for_plots(page, plots_on_page_0)

            # one step: every plot (prices, dependency, shortage, trade map) is redrawn
            stepped = _step(page, start)
            assert len(set(stepped)) == plots_on_page_0
            assert page.get_by_text("error in step").count() == 0

            # the tariff lever: keyboard to 0.5, Reset rebuilds the model with it, one step
            tariff = page.get_by_role("slider", name=re.compile("tariff", re.IGNORECASE))
            tariff.focus()
            for _ in range(10):
                tariff.press("ArrowRight")
            assert float(tariff.get_attribute("aria-valuenow")) == pytest.approx(0.5)
            page.get_by_role("button", name="Reset").click()
            reset = _wait_for_plots(page, plots_on_page_0, differ_from=stepped)
            with_tariff = _step(page, reset)

            # same seed and month: only the tariff differs, and the prices show it
            assert with_tariff[0] != stepped[0], "the price plot ignores the tariff lever"
            assert page.get_by_text("error in step").count() == 0
        finally:
            browser.close()


# ------------------------------------------------------------------ the dashboard's model


def test_dashboard_controls_reach_the_scenario() -> None:
    from abm.app import DashboardModel

    off = DashboardModel()
    assert off.config.alliance == ["US", "EU", "JP"]
    assert not off.config.policies.price_floors and off.config.policies.reserve is None

    on = DashboardModel(
        tariff_rate=0.25,
        floor_level_usd_per_kg=110.0,
        floor_mechanism="border_adjusted",
        reserve_budget_usd_million=5000.0,
        export_quota_kt_per_yr=40.0,
        china_pricing_mode="strategic",
        join_AU=True,
        join_KR=True,
    )
    policies = on.config.policies
    assert {t.rate for t in policies.tariffs if t.origin == "china"} == {0.25}
    assert [(f.level_usd_per_kg, f.mechanism) for f in policies.price_floors] == [
        (110.0, "border_adjusted")
    ]
    reserve = policies.reserve
    assert reserve.loan_usd_million + reserve.private_usd_million == pytest.approx(5000.0)
    assert any(c.quota_t_per_yr == 40_000.0 for c in policies.export_controls)
    assert policies.china_pricing.mode == "strategic"
    assert on.config.alliance == ["US", "EU", "JP", "AU", "KR"]


def test_a_zero_quota_on_the_dashboard_means_no_quota_not_a_ban() -> None:
    from abm.app import dashboard_overrides

    assert "export_quota_t_per_yr" not in dashboard_overrides(export_quota_kt_per_yr=0.0)
    assert "floor_mechanism" not in dashboard_overrides(floor_level_usd_per_kg=0.0)
