"""`hybrid-hpo dashboard` on a finished quickstart study, driven by headless Chromium (Selenium).

Needs Debian's chromium and chromium-driver (.ci/system-packages.sh installs them) and the
selenium package (dev extra); skipped with the reason when they are missing. Run inside a
loopback-only network namespace (README's test command).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hybrid_hpo import cli

QUICKSTART = Path(__file__).resolve().parents[1] / "searches" / "quickstart.yaml"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the dashboard exited: {log.read_text()[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/system-packages.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_dashboard_shows_trials_curves_test_acc_and_pictures(ray_session, browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    results = tmp_path / "results"
    assert cli.main(["sweep", str(QUICKSTART), "--num-samples", "2", "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    command = out[out.index("Open the dashboard:"):].splitlines()[1].split()
    assert command[:2] == ["hybrid-hpo", "dashboard"] and "--artifact-dir" in command
    meta = json.loads((results / "sweep.json").read_text())
    study = optuna.load_study(study_name=meta["study_name"], storage=meta["storage"])
    study_id = study._study_id
    best = study.trials[0]
    artifacts = [a for a in optuna.artifacts.get_all_artifact_meta(best, storage=study._storage)
                 if a.filename == "curves.png"]
    assert len(artifacts) == 1

    port = _free_port()
    log = (tmp_path / "dashboard.log").open("w")
    dashboard = subprocess.Popen([sys.executable, "-m", "hybrid_hpo.cli", *command[1:], "--port", str(port)],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, dashboard, tmp_path / "dashboard.log")
        wait = WebDriverWait(browser, 90)
        body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731

        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}")
        wait.until(lambda _: meta["study_name"] in body())
        plot = wait.until(lambda d: d.find_element(By.ID, "graph-intermediate-values"))
        wait.until(lambda _: "trial #0" in plot.text and "trial #1" in plot.text)  # one curve per trial
        assert plot.find_elements(By.CSS_SELECTOR, "g.trace")  # plotly drew the curves
        browser.save_screenshot(str(tmp_path / "study.png"))

        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/trials")
        wait.until(lambda _: "2 Trials" in body() and "Trial 1" in body())
        wait.until(lambda _: f"test_acc {best.user_attrs['test_acc']}" in body())
        image = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"img[src*='{artifacts[0].artifact_id}']"))
        wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        assert browser.execute_script("return arguments[0].naturalWidth", image) == 640  # curves.png: 8 in x 80 dpi
        browser.save_screenshot(str(tmp_path / "trial.png"))
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
        log.close()
    assert (tmp_path / "study.png").stat().st_size > 10_000 and (tmp_path / "trial.png").stat().st_size > 10_000
