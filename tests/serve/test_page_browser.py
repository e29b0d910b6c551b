"""The search page in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``; .ci/run
installs them) driven by Selenium against a real uvicorn serving the tiny bundle. Types a query, reads the
results, moves through them with the keyboard, filters by language. Skipped where Chromium is absent.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run, own_document

from semcode.serve.app import ServeConfig, bundle_loader, create_app, uvicorn_config

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)",
)
WAIT_S = 30.0


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run: TinyRun = cached_tiny_run(tmp_path_factory)
    return assemble_tiny_bundle(run, tmp_path_factory.mktemp("browser_bundle") / "bundle")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[str]:
    """A real uvicorn on a free port, in a thread: its base URL once the bundle is ready."""
    import uvicorn

    config = ServeConfig(threads=1, link_base="https://code.example/{repo}/blob/{commit}/{path}#L{line}")
    app = create_app(bundle_loader(str(tiny_bundle), config), config)
    server = uvicorn.Server(uvicorn_config(app, config, "127.0.0.1", 0, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and server.servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    while httpx.get(f"{base}/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield base
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def test_typing_a_query_shows_results_and_the_keyboard_moves_through_them(
    server: str, browser, tiny_bundle: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    corpus = pq.read_table(tiny_bundle / "index_meta.parquet").to_pylist()
    gold = corpus[20]
    browser.get(server + "/")
    box = browser.switch_to.active_element  # autofocus: typing starts at once
    assert box.get_attribute("id") == "q"
    box.send_keys(" ".join(own_document(gold).split())[:300], Keys.ENTER)  # a newline would submit early
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "li.hit")))
    hits = browser.find_elements(By.CSS_SELECTOR, "li.hit")
    assert len(hits) == 10
    first = hits[0]
    assert first.find_element(By.CSS_SELECTOR, ".location").text == f"{gold['path']}:{gold['start_line']}"
    assert first.find_element(By.CSS_SELECTOR, ".signature").text == gold["signature"]
    assert first.find_element(By.CSS_SELECTOR, "pre .k").text in ("def", "async")  # highlighted
    link = first.find_element(By.CSS_SELECTOR, "a.location").get_attribute("href")
    assert link.startswith(f"https://code.example/{gold['repo']}/blob/HEAD/")

    body = browser.find_element(By.TAG_NAME, "body")
    body.click()  # out of the query box: the page's keys
    body.send_keys("j")
    assert browser.switch_to.active_element == hits[0]
    browser.switch_to.active_element.send_keys("j")
    assert browser.switch_to.active_element == hits[1]
    browser.switch_to.active_element.send_keys("k")
    assert browser.switch_to.active_element == hits[0]
    browser.switch_to.active_element.send_keys("/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"

    Select(browser.find_element(By.ID, "language")).select_by_value("go")
    browser.find_element(By.ID, "q").send_keys(Keys.ENTER)
    wait.until(expected_conditions.url_contains("language=go"))
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "li.hit")))
    languages = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "li.hit .language")]
    assert languages and set(languages) == {"go"}
    assert len(languages) == sum(row["language"] == "go" for row in corpus)
    summary = browser.find_element(By.ID, "summary").text
    assert "in go" in summary


def test_a_refusal_is_shown_on_the_page(server: str, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/?q=" + "x" * 1001)
    alert = browser.find_element(By.CSS_SELECTOR, "[role=alert]")
    assert "at most 1000" in alert.text
    assert not browser.find_elements(By.CSS_SELECTOR, "li.hit")
