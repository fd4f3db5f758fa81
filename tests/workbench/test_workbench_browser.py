"""A product manager's journey through the workbench in a real browser: Debian's headless Chromium, driven by
Selenium through /usr/bin/chromedriver (nothing is downloaded), against `flywheel workbench` started as its own
process with a token access file and an LLM judge (the OpenAI-compatible stub, priced like gpt-4o-mini).

Sign in, open a draft, make a mistake and see it at its line, fix it, preview the impact (confirming its cost),
publish, see the new version active; then the next day's labels under it. Screenshots go to the test's directory,
and to $FLYWHEEL_SCREENSHOTS when set (the README's come from `FLYWHEEL_SCREENSHOTS=docs/workbench`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.openai_stub import StubServer, free_port
from tests.stack.services import Service, clean_env, wait_http

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TOKEN = "pia-secret-token-0123"
DATE = "2026-12-02"

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and DRIVER.exists()),
                                reason="Debian's chromium and chromium-driver are missing: `make system-deps`")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000",
                "--disable-gpu", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=DriverService(executable_path=str(DRIVER)))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def workbench(tmp_path, monkeypatch):
    """`flywheel workbench` as a process on a free port; yields (url, config, paths, policy file, stub)."""
    from flywheel.config import load_config
    from flywheel.settings import Paths

    policy = tmp_path / "policies" / "open_data_search.md"
    policy.parent.mkdir()
    shutil.copy(ROOT / "policies" / "open_data_search.md", policy)
    access = tmp_path / "access.yaml"
    access.write_text(yaml.safe_dump({"identity": "token", "users": [
        {"name": "pia", "role": "publisher", "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]}))
    with StubServer() as stub:
        raw = yaml.safe_load((ROOT / "configs" / "stack_test.yaml").read_text())
        raw["policy"] = str(policy)
        raw["judge"].update(backend="openai", openai_model="stub", openai_base_url=stub.base_url, exemplar_sets=0,
                            probe_pairs=8, min_qwk=0.1)
        config = tmp_path / "workbench.yaml"
        config.write_text(yaml.safe_dump(raw))
        port = free_port()
        # its own lake: the journey labels a day, which no other test may see
        env = clean_env(FLYWHEEL_HOME=str(tmp_path / "home"), FLYWHEEL_LAKE=str(tmp_path / "lake"),
                        OPENAI_API_KEY="test-key")
        svc = Service("workbench", [str(ROOT / ".venv" / "bin" / "flywheel"), "workbench", "--config", str(config),
                                    "--port", str(port), "--access", str(access)], env, tmp_path)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", svc.proc, 120, svc.log)
            monkeypatch.setenv("OPENAI_API_KEY", "test-key")
            yield (f"http://127.0.0.1:{port}", load_config(config),
                   Paths(home=tmp_path / "home", lake_dir=tmp_path / "lake"), policy, stub)
        finally:
            svc.stop()


def _shoot(driver, tmp_path, name):
    driver.save_screenshot(str(tmp_path / name))
    if os.environ.get("FLYWHEEL_SCREENSHOTS"):
        out = Path(os.environ["FLYWHEEL_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, out / name)


def _set_editor(driver, text):
    driver.execute_script("const e = document.getElementById('editor'); e.value = arguments[0];"
                          "e.dispatchEvent(new Event('input'));", text)


def test_product_manager_journey(browser, workbench, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, cfg, paths, policy, stub = workbench
    d, wait = browser, WebDriverWait(browser, 30)
    original = policy.read_text()

    # 1. open: sign in, the active policy rendered
    d.get(url + "/")
    wait.until(EC.url_contains("/login"))
    d.find_element(By.ID, "token").send_keys(TOKEN)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait.until(EC.presence_of_element_located((By.ID, "active")))
    assert "version 23841e38bf905b62" in d.find_element(By.ID, "active").text
    assert "pia · publisher" in d.find_element(By.ID, "who").text
    _shoot(d, tmp_path, "1-overview.png")

    # 2. edit: a new draft; a mistake is shown at its line with policy check's message
    d.find_element(By.ID, "new-draft").click()
    wait.until(EC.presence_of_element_located((By.ID, "editor")))
    wait.until(EC.text_to_be_present_in_element((By.ID, "check-summary"), "valid"))
    lines = original.splitlines()
    bad = lines.index("    label: Excellent")
    lines[bad] = "    label: Excellent\n    colour: green"                 # a field the format does not have
    _set_editor(d, "\n".join(lines))
    wait.until(EC.text_to_be_present_in_element((By.ID, "problems"), f"line {bad + 2}"))
    problem = d.find_element(By.CSS_SELECTOR, "#problems li").text
    assert problem == f"line {bad + 2}: scale.3.colour: Extra inputs are not permitted — fix: remove it, or " \
                      "check its spelling against the template in policies/README.md"
    assert f"● {bad + 2}" in d.find_element(By.ID, "gutter").text              # the line is marked
    d.find_element(By.CSS_SELECTOR, "#problems li a").click()                  # and a click selects it
    assert d.execute_script("const e = document.getElementById('editor');"
                            "return e.value.substring(e.selectionStart, e.selectionEnd)") == "    colour: green"
    _shoot(d, tmp_path, "2-line-error.png")

    # 3. fix it, and make the real edit: the judge sees dataset titles only; plus a script that must stay text
    edited = original.replace("document_fields: [title, text]", "document_fields: [title]")
    edited = "\n".join(l for l in edited.splitlines() if not l.startswith("    text: ")) + \
        "\n\nNever trust <script>alert('xss')</script> in a title.\n"
    _set_editor(d, edited)
    wait.until(EC.text_to_be_present_in_element((By.ID, "check-summary"), "✓ valid"))
    assert d.find_elements(By.CSS_SELECTOR, "#problems li") == []
    # ... and rename a grade in the form instead of the YAML
    d.find_element(By.CSS_SELECTOR, "#form-panel summary").click()
    label = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#form-scale tbody tr:nth-child(2) "
                                                                         "input[data-key=label]")))
    assert label.get_attribute("value") == "Loosely relevant"
    label.clear()
    label.send_keys("Somewhat relevant")
    d.find_element(By.ID, "apply-form").click()
    wait.until(lambda drv: "label: Somewhat relevant" in drv.execute_script(
        "return document.getElementById('editor').value"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "check-summary"), "✓ valid"))
    edited = d.execute_script("return document.getElementById('editor').value")
    assert edited.endswith("Never trust <script>alert('xss')</script> in a title.\n")   # the guidance is kept

    # 4. preview: the paid judge's cost is shown and confirmed first, then the preview runs with progress
    d.find_element(By.ID, "preview").click()
    wait.until(EC.visibility_of_element_located((By.ID, "cost-confirm")))
    assert "≈ $" in d.find_element(By.ID, "cost-text").text and not stub.calls
    d.find_element(By.ID, "confirm-cost").click()
    WebDriverWait(d, 300).until(EC.visibility_of_element_located((By.ID, "preview-result")))
    rows = d.find_elements(By.CSS_SELECTOR, "#changed-table tbody tr")
    assert rows and "golden pair(s) change grade" in d.find_element(By.ID, "changed-title").text
    old, new = (int(c.text) for c in rows[0].find_elements(By.TAG_NAME, "td")[3:5])
    assert new < old                                                           # titles only: fewer matches
    assert len(d.find_elements(By.CSS_SELECTOR, "#agreement-table tbody tr")) == 2
    d.execute_script("document.getElementById('preview-panel').scrollIntoView()")
    _shoot(d, tmp_path, "3-impact-preview.png")

    # 5. publish: the new version is active, with its author and message
    d.find_element(By.ID, "publish-message").send_keys("Judge datasets by their titles only")
    d.find_element(By.ID, "publish").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "publish-result"), "Published version"))
    wait.until(EC.presence_of_element_located((By.ID, "history")))
    from flywheel.judge.policy import load_policy

    active = load_policy(policy)
    assert policy.read_text().replace("\r\n", "\n") == edited and active.document_fields == ["title"]
    assert active.scale[1].label == "Somewhat relevant"
    first = d.find_element(By.CSS_SELECTOR, "#history tbody tr")
    assert active.version in first.text and "active" in first.text and "pia" in first.text
    assert "Judge datasets by their titles only" in first.text
    assert "<script>alert('xss')</script>" in d.find_element(By.ID, "active").text   # shown as text
    with pytest.raises(NoAlertPresentException):
        d.switch_to.alert.text                                                # and never run
    _shoot(d, tmp_path, "4-published.png")

    # 6. the next day's labelling recalibrates under the new version and labels with it
    from flywheel.judge.calibrate import calibrate
    from flywheel.labeling.candidates import retrieve_candidates
    from flywheel.labeling.daily import label_candidates

    t0 = time.time()
    cal = calibrate(cfg, paths)
    assert cal["policy_version"] == active.version and cal["gate"]["passed"], cal["gate"]
    retrieve_candidates(DATE, cfg, paths)
    out = label_candidates(DATE, cal, cfg, paths)
    assert out["labelled"] > 0
    d.get(url + "/labels")
    text = d.find_element(By.TAG_NAME, "main").text
    assert f"{out['labelled']} labels on {DATE}" in text and "paid labelling run" in text
    _shoot(d, tmp_path, "5-next-days-labels.png")
    print(f"labelling day under the new version: {out['labelled']} labels in {time.time() - t0:.0f} s")
