"""The writer's web page in headless Chromium: a memory edited on the page is what the next step reads."""

import shutil
import threading

import pytest
from conftest import numbered_answers

from memlm.textmem import RecurrentWriter, ScriptedBackend, TextMemory
from memlm.textmem.web import make_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


@pytest.fixture
def page(tmp_path, embedder):
    from selenium.webdriver.chrome.service import Service

    memory = TextMemory(tmp_path / "story.db", embedder=embedder)
    backend = ScriptedBackend(numbered_answers())
    server = make_server(RecurrentWriter(memory, backend), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
    yield browser, backend, memory
    browser.quit()
    server.shutdown()
    server.server_close()
    memory.close()


def wait_for_status(browser, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda b: text in b.find_element(By.ID, "status").text)


def test_edits_on_the_page_reach_the_next_step(page):
    from selenium.webdriver.common.by import By

    browser, backend, memory = page
    wait_for_status(browser, "no story yet")
    browser.find_element(By.ID, "premise").send_keys("A story about numbers.")
    browser.find_element(By.ID, "start").click()
    wait_for_status(browser, "ready: step 1")
    short_term = browser.find_element(By.ID, "short-term")
    assert short_term.get_attribute("value") == "Memory after paragraph 1."
    short_term.clear()
    short_term.send_keys("The hero is called Ada and fears the sea.")
    plan = browser.find_element(By.ID, "plan-1")
    plan.clear()
    plan.send_keys("Ada crosses the sea anyway.")
    browser.find_element(By.ID, "use-plan-1").click()  # unsaved edits are saved first, then the step runs
    wait_for_status(browser, "ready: step 2")
    prompt = backend.prompts[-1]
    assert "The hero is called Ada and fears the sea." in prompt and "Ada crosses the sea anyway." in prompt
    paragraphs = [e.get_attribute("value") for e in browser.find_elements(By.CSS_SELECTOR, ".paragraph textarea")]
    assert paragraphs == ["Paragraph number 1.", "Paragraph number 2."]
    assert browser.find_element(By.ID, "short-term").get_attribute("value") == "Memory after paragraph 2."
    assert memory.history(memory.items("short_term")[0].id)[-1] == "The hero is called Ada and fears the sea."
    # a paragraph edited and saved on the page is the one the next step shows as the last paragraph
    last = browser.find_elements(By.CSS_SELECTOR, ".paragraph textarea")[-1]
    last.clear()
    last.send_keys("Ada reached the far shore.")
    browser.find_elements(By.CSS_SELECTOR, ".paragraph button")[-1].click()
    wait_for_status(browser, "ready: step 2")
    browser.find_element(By.ID, "use-plan-0").click()
    wait_for_status(browser, "ready: step 3")
    assert "The last paragraph written:\nAda reached the far shore." in backend.prompts[-1]


def test_errors_are_shown_on_the_page(page):
    from selenium.webdriver.common.by import By

    browser, _, _ = page
    wait_for_status(browser, "no story yet")
    browser.find_element(By.ID, "start").click()  # empty premise
    wait_for_status(browser, "error: ValueError: premise must be a non-empty string")
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
