"""The MLflow UI in a real browser (headless Chromium, Debian's package, driven by playwright): the experiment's
run with its metrics, and the registered model with its `production` alias. Screenshots stay in the test's tmp dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sibeatgan.config import TrackingConfig
from sibeatgan.registry import promote, run_register

pytest_plugins = ["tests.services"]

NAME = "si-beatgan-ui"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium binary (apt-get install chromium)")


def test_ui_shows_run_metrics_and_production_alias(mlflow_env, small_teacher: dict, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from mlflow import MlflowClient

    reg = run_register(TrackingConfig(model_name=NAME, n_bootstrap=50), small_teacher["generator"], small_teacher["eval"],
                       small_teacher["dataset"], tmp_path / "register")
    promote(NAME, n_bootstrap=50)
    run = MlflowClient().get_run(reg["run_id"])
    auc = str(run.data.metrics["auc"])[:5]  # the run page shows the full value

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(http_credentials={"username": "admin", "password": mlflow_env.admin_password},
                                          viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.set_default_timeout(60_000)
            body = page.locator("body")
            page.goto(f"{mlflow_env.url}/#/experiments/{run.info.experiment_id}/runs")  # the experiment's runs
            sync_api.expect(body).to_contain_text(run.info.run_name, timeout=60_000)
            page.screenshot(path=str(tmp_path / "experiment.png"), full_page=True)

            page.goto(f"{mlflow_env.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
            for text in ("Metrics", "auc_ci_low", auc):
                sync_api.expect(body).to_contain_text(text, timeout=60_000)
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

            page.goto(f"{mlflow_env.url}/#/models/{NAME}")
            for text in ("Version 1", "production", "staging", "promotion.1"):
                sync_api.expect(body).to_contain_text(text, timeout=60_000)
            page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
        finally:
            browser.close()
    for shot in ("run.png", "experiment.png", "model.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
    print(f"screenshots in {tmp_path}")
