"""The archive explorer in a real browser: JupyterLab (this venv) in headless Chromium runs
notebook 02 under the smoke profile, a cell of the QDGS archive is chosen with the explorer's
bin sliders, and the chosen elite's image and facts must appear. Screenshot:
``runs/ui/explorer.png``. Run with ``make test-ui`` (installs Playwright and Debian's Chromium).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from qdgs_lib import explorer, measures
from qdgs_lib.paths import REPO_ROOT
from qdgs_lib.profiles import get_profile

CHROMIUM = os.environ.get("QDGS_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
TOKEN = "qdgs-ui-test"
OUT = REPO_ROOT / "runs" / "ui"
# a closed network: no background connections, no GPU, root needs --no-sandbox
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    """JupyterLab on a copy of notebook 02 (the repository's notebook stays untouched), with
    runs written under runs/ui and the smoke profile."""
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    root = OUT / "lab"
    root.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "notebooks" / "02_face_synthesis.ipynb", root)
    port = _free_port()
    settings = OUT / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "news" pop-up over the screenshot (and no fetch)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    env = {**os.environ, "QDGS_PROFILE": "smoke", "QDGS_RUNS_DIR": str(OUT / "runs"),
           "HF_HUB_OFFLINE": "1", "JUPYTERLAB_SETTINGS_DIR": str(OUT / "settings")}
    log = open(OUT / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={TOKEN}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.allow_root=True"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited; see {OUT / 'jupyterlab.log'}") from None
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError(f"JupyterLab did not start in 120 s; see {OUT / 'jupyterlab.log'}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _expected(dims):
    """The QDGS archive the notebook wrote, read by the explorer's data layer: a filled cell
    other than the one the explorer opens on, and that cell's elite's facts."""
    p = get_profile("smoke", "faces")
    frame = pd.read_parquet(OUT / "runs" / "02_face_synthesis" / "smoke" / "search_cma_maega"
                            / "archive.parquet")
    data = explorer.ArchiveData(frame, p["measures"], decode=None, prior_norms=np.ones(1),
                                truth=explorer.toy_truth)
    plane = data.plane(dims)
    filled = np.argwhere(~np.isnan(plane))  # (y bin, x bin), objective order below
    order = np.argsort(-plane[filled[:, 0], filled[:, 1]])
    assert len(order) >= 2, "the smoke archive has fewer than two filled cells"
    y, x = filled[order[1]]  # the second-best cell: the explorer opens on the best
    row = data.elite_at(dims, (int(x), int(y)))
    first_line = explorer.format_facts(data.facts(row), data.measures)[0]
    return (int(x), int(y)), first_line, data.facts(row)


def _set_slider(page, panel, description: str, value: int) -> None:
    """Type a value into an ipywidgets slider's editable readout (what a user can do)."""
    slider = panel.locator(".widget-slider", has=page.locator(
        f"label:text-is('{description}')"))
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def test_explorer_shows_the_chosen_elite(lab):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(f"{lab}/lab/tree/02_face_synthesis.ipynb?token={TOKEN}")
        page.wait_for_function("() => window.jupyterapp !== undefined", timeout=120_000)
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        page.wait_for_function(  # a kernel is attached and idle
            "() => { const w = window.jupyterapp.shell.currentWidget;"
            " return w && w.sessionContext && w.sessionContext.session &&"
            " w.sessionContext.session.kernel &&"
            " w.sessionContext.session.kernel.status === 'idle'; }", timeout=120_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        panel = page.locator(".qdgs-explorer").first
        panel.wait_for(state="visible", timeout=600_000)
        p = get_profile("smoke", "faces")
        dims = (measures.index(p, "skin"), measures.index(p, "age"))
        cell, first_line, facts = _expected(dims)
        qdgs = panel.locator(".widget-vbox", has=page.locator("b:text-is('QDGS (CMA-MAEGA)')"))
        before = qdgs.locator("img").nth(1).get_attribute("src")
        _set_slider(page, panel, "x bin", cell[0])
        _set_slider(page, panel, "y bin", cell[1])
        expect(qdgs.locator(".qdgs-facts").last).to_contain_text(first_line, timeout=60_000)
        image = qdgs.locator("img").nth(1)
        expect(image).not_to_have_attribute("src", before or "", timeout=60_000)
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
        skin = facts["measures"]["skin"]
        expect(qdgs.locator(".qdgs-facts").last).to_contain_text(f"{skin:+.3f}")
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(OUT / "explorer.png"))
        page.screenshot(path=str(OUT / "page.png"), full_page=False)
        browser.close()
    assert (OUT / "explorer.png").stat().st_size > 10_000
