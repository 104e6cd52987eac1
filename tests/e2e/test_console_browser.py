"""The operator console (/ui) in a real browser: Debian's chromium driven by Selenium (chromium-driver), against
`make demo`'s router with keys on. Screenshots of each part go to $LLM_ROUTER_ARTIFACTS (default
tests/e2e/artifacts/)."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from router_app.tools.demo import write_demo
from tests.conftest import ROOT, RouterProcess, wait_until

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

ARTIFACTS = Path(os.environ.get("LLM_ROUTER_ARTIFACTS", ROOT / "tests" / "e2e" / "artifacts"))


@pytest.fixture(scope="module")
def demo(llama_server_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProcess, str]]:
    work = tmp_path_factory.mktemp("console")
    config_path = write_demo(work / "demo", llama_server_bin, port=0)
    client_key = secrets.token_hex(16)
    (work / "client.keys").write_text(client_key + "\n")
    config = yaml.safe_load(config_path.read_text())
    # A declared CPU budget that holds one demo model at a time, so the page has memory bars to draw and check.
    config["router"].update(
        api_key_files=[str(work / "client.keys")], memory={"source": "declared", "devices": {"cpu": "1GiB"}}
    )
    for model in config["models"]:
        model["memory"] = "600MiB"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    router = RouterProcess(config_path)
    try:
        yield router, client_key
    finally:
        router.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"console-{name}.png"))


def status_of(browser, model: str) -> str:
    """Read in the page (the table is redrawn on every change: an element found before may be gone)."""
    return browser.execute_script(
        "const c = document.querySelector(`#model-table tr[data-model='${arguments[0]}'] td[data-status]`);"
        "return c ? c.dataset.status : '';",
        model,
    )


def texts(browser, selector: str) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent || e.dataset.model || '');",
        selector,
    )


def chat(router: RouterProcess, key: str, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 24, **extra}
    return httpx.post(
        router.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def test_the_console_shows_and_steers_the_demo(demo, browser) -> None:
    router, key = demo
    browser.get(router.url + "/ui")
    wait_until(lambda: "offline" in browser.find_element(By.ID, "conn").text, "the page to say it needs a key", 20)
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
    wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", "the event stream", 20)
    wait_until(lambda: status_of(browser, "tiny-a") and status_of(browser, "tiny-b"), "both models listed", 20)
    shot(browser, "models")

    # Load tiny-b from the page: it turns loaded and tiny-a unloaded, without a reload.
    browser.find_element(By.CSS_SELECTOR, '#model-table tr[data-model="tiny-b"] button').click()
    wait_until(lambda: status_of(browser, "tiny-b") == "loaded", "tiny-b loaded", 60)
    chat(router, key, "tiny-a")
    wait_until(
        lambda: status_of(browser, "tiny-a") == "loaded" and status_of(browser, "tiny-b") == "unloaded",
        "tiny-a loaded and tiny-b unloaded",
        60,
    )
    health = httpx.get(router.url + "/health").json()
    bars = browser.execute_script(
        "return [...document.querySelectorAll('#memory .bar span')].map((e) => e.dataset.model);"
    )
    resident = {held["model"] for device in health["memory"] for held in device["models"]}
    assert resident == {"tiny-a"} and set(bars) == resident, ("the memory bars are /health's", bars, resident)

    # Under each bar, each resident model's measured and estimated footprint, as /health has them.
    def gib(value: int | None) -> str:  # as the page writes sizes
        if value is None:
            return "?"
        return f"{value / 1024**3:.1f} GiB" if value >= 1024**3 else f"{value / 1024**2:.0f} MiB"

    def legend_matches_health() -> bool:
        held = next(h for d in httpx.get(router.url + "/health").json()["memory"] for h in d["models"])
        shown = texts(browser, f'#memory ul.held li[data-model="{held["model"]}"]')
        want = f"measured {gib(held['measured'])}, estimated {gib(held['estimated'])}"
        return held["estimated"] is not None and bool(shown) and want in shown[0]

    wait_until(legend_matches_health, "the measured and estimated footprints of /health under the bar", 20)

    # The log panel shows llama-server's lines as they are written.
    Select(browser.find_element(By.ID, "log-source")).select_by_value("tiny-a")
    wait_until(lambda: "llama" in "".join(texts(browser, "#log-lines")), "tiny-a's engine log", 20)
    shot(browser, "logs")

    # A chat request appears in Activity with its tok/s.
    assert chat(router, key, "tiny-a").status_code == 200
    wait_until(
        lambda: [t for t in texts(browser, "#recent-table tr[data-outcome=ok] td.tps") if t],
        "a finished request with its tok/s",
        20,
    )
    shot(browser, "activity")

    # A long streamed request appears in flight; Cancel ends it and the engine stops generating.
    ended = threading.Event()
    lines: list[str] = []

    def long_stream() -> None:
        body = {"model": "tiny-a", "prompt": "once", "max_tokens": 8000, "stream": True}
        with httpx.stream(
            "POST", router.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as response:
            lines.extend(response.iter_lines())
        ended.set()

    threading.Thread(target=long_stream, daemon=True).start()
    cancel = wait_until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#inflight-table button"), "the request in flight", 20
    )
    cancel[0].click()
    assert ended.wait(30), "Cancel did not end the stream"
    assert sum(1 for line in lines if line.startswith("data: {")) < 4000
    wait_until(lambda: texts(browser, "#recent-table tr[data-outcome=cancelled]"), "the cancelled request", 20)
    assert not texts(browser, "#inflight-table tbody tr")
    wait_until(lambda: texts(browser, "#event-table tbody tr"), "load events", 10)
    shot(browser, "events")
