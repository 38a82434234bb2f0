"""The MLflow UI of a real tracking server, in headless Chromium, shows fedlight's runs and test_accuracy's chart first.

Playwright drives the system's Chromium (no browser download). Skipped
without Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs
it) or without the ``playwright`` package (the dev extra).
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest
from mlflow import MlflowClient

from fedlight.tracking import ui_path

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (the dev extra: pip install -e '.[dev]')"),
]

# without the background-networking flags Chromium's own connections are refused offline and it stalls
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000


def test_the_ui_lists_fedlights_runs_and_charts_test_accuracy(served_run):
    from playwright.sync_api import sync_playwright

    client = MlflowClient(served_run.server.uri)
    experiment = client.get_experiment_by_name(served_run.experiment)
    names = [run.info.run_name for run in client.search_runs([experiment.experiment_id])]
    assert names

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            # the address fedlight prints: the runs beside their charts, in the model-training pages (a new
            # browser starts in GenAI), in fedlight's chart view
            page.goto(f"{served_run.server.uri}/{ui_path(experiment.experiment_id)}")
            for name in names:  # the run list
                page.get_by_role("link", name=name, exact=True).first.wait_for()
            page.get_by_text("You're viewing a shared view", exact=False).first.wait_for()  # the view is loaded
            page.locator("h4[title]").first.wait_for()
            assert page.locator("h4[title]").first.get_attribute("title") == "test_accuracy"  # the first chart
            page.get_by_placeholder("Search metric charts").fill("test_accuracy")
            page.locator('h4[title="test_accuracy"]').wait_for()
            for name in names:  # the chart's legend: it plots every run
                page.get_by_text(f"{name} (test_accuracy)", exact=True).wait_for()
        finally:
            browser.close()
