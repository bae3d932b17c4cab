"""The front door: a student opens the tutorial notebooks in JupyterLab and runs them.

A JupyterLab server (127.0.0.1, a free port, a random token, a temporary root folder) and a
headless Chromium driven by Playwright open every notebook of ``notebooks/0*.ipynb`` (as a
smoke-mode copy made with papermill's prepare-only mode), run all cells from the menu and
check that the run finishes with no error output and that every widget renders; in
``04_playground`` a new preset and a moved slider must redraw the figure. Screenshots of each
notebook go to ``$LABKIT_ARTIFACTS`` (default: a pytest temporary folder; the path is printed).

Run just these: ``.venv/bin/python -m pytest tests/test_browser.py -q`` (or ``-m browser``).
Needs playwright (a dependency of the project; no ``playwright install``: the test uses the
system's Chromium, ``apt-get install chromium`` or ``$LABKIT_CHROMIUM``). Without a Chromium
or playwright the tests skip, except in CI (``CI=true``), where they fail.
``$LABKIT_BROWSER_TIMEOUT`` (seconds, default 600) bounds each notebook's run.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_support as bs

pytestmark = pytest.mark.browser

TIMEOUT_MS = float(os.environ.get("LABKIT_BROWSER_TIMEOUT", "600")) * 1000  # one notebook's run
UPDATE_TIMEOUT_MS = min(TIMEOUT_MS, 180_000)  # one redraw of the playground (a few seconds in smoke mode)
OPEN_TIMEOUT_MS = 180_000  # loading JupyterLab and starting a kernel on a busy 2-core machine
VIEWPORT = {"width": 1400, "height": 1000}


def _unavailable(reason: str) -> None:
    """Skip on a user's machine; fail in CI, where the browser test must run."""
    if bs.in_ci():
        pytest.fail(f"{reason} (CI=true: in CI the browser test fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium(request):
    """A headless Chromium (the system's, through Playwright), closed at the end."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        _unavailable(f"playwright is not installed ({err}): {bs.HOW_TO_GET_PLAYWRIGHT}")
    exe, how = bs.find_chromium()
    if exe is None:
        _unavailable(f"{how}: {bs.HOW_TO_GET_CHROMIUM}")
    pw = sync_playwright().start()
    request.addfinalizer(pw.stop)
    try:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=bs.CHROMIUM_ARGS, timeout=120_000)
    except Exception as err:  # noqa: BLE001  (a browser that is there but does not start is a failure)
        pytest.fail(f"Chromium ({exe}, found as {how}) did not start: {err}", pytrace=False)
    request.addfinalizer(browser.close)  # runs before pw.stop (finalizers run last-in, first-out)
    return browser


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ["LABKIT_ARTIFACTS"]) if os.environ.get("LABKIT_ARTIFACTS") else (
        tmp_path_factory.mktemp("browser-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


@pytest.fixture(scope="module")
def lab(request, tmp_path_factory, chromium) -> bs.JupyterLab:
    """JupyterLab serving smoke-mode copies of the notebooks (and a broken notebook), with
    kernel python3 = this venv's interpreter; stopped (with its kernels) at the end. Started
    only once a browser is there (``chromium`` skips or fails first)."""
    tmp = tmp_path_factory.mktemp("lab")
    root, state = tmp / "root", tmp / "state"
    root.mkdir()
    state.mkdir()
    for nb in bs.NOTEBOOKS:
        bs.smoke_copy(nb, root, tmp / "figures")
    bs.write_notebook(root / "zz_raises.ipynb", [  # for test_the_checks_catch_a_broken_notebook
        "import sys\nprint('a warning on stderr is no error', file=sys.stderr)\nprint('hello')",
        ("from IPython.display import display\n"  # a view of a widget model that does not exist
         "display({'application/vnd.jupyter.widget-view+json': {'model_id': 'no-such-model', "
         "'version_major': 2, 'version_minor': 0}}, raw=True)"),
        "1 / 0",
        "x = 3\nx",
    ])
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # tests/conftest.py sets Agg; the notebooks' kernels need the inline backend
    env = bs.venv_kernel_env(env, tmp / "kernel")
    server = bs.JupyterLab(root, state)
    request.addfinalizer(server.stop)
    server.start(env)
    spec = server.api("GET", "/api/kernelspecs")["kernelspecs"].get(bs.KERNEL)
    assert spec is not None, f"the server has no kernel {bs.KERNEL}"
    argv0 = spec["spec"]["argv"][0]
    assert bs._same_interpreter(argv0), f"the server's kernel {bs.KERNEL} starts {argv0}, not {sys.executable}"
    return server


@pytest.fixture
def page(chromium, lab):
    """A fresh browser context and page; afterwards the page is closed and every kernel shut down."""
    context = chromium.new_context(viewport=VIEWPORT)
    yield context.new_page()
    try:
        context.close()
    finally:
        lab.shutdown_kernels()


def _open_and_run(page, lab: bs.JupyterLab, name: str) -> dict:
    bs.open_notebook(page, lab, name, OPEN_TIMEOUT_MS)
    state = bs.notebook_state(page)
    assert state["kernelName"] in (None, bs.KERNEL), f"{name} runs on kernel {state['kernelName']}, not {bs.KERNEL}"
    assert state["unexecuted"] == state["codeCells"] and not state["tracebacks"], f"{name} is not fresh: {state}"
    bs.run_all_cells(page)
    try:
        return bs.wait_until_finished(page, TIMEOUT_MS)
    except Exception as err:  # noqa: BLE001  (playwright's TimeoutError)
        raise AssertionError(f"{name}: the run did not finish within {TIMEOUT_MS / 1000:g} s "
                             f"({type(err).__name__}); state: {bs.notebook_state(page)}") from None


def _report(capsys, text: str) -> None:
    print(text)
    with capsys.disabled():
        print(f"\n    {text}", end="")


@pytest.mark.parametrize("notebook", bs.NOTEBOOKS, ids=[p.stem for p in bs.NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(notebook: Path, lab, page, artifacts: Path, capsys):
    """Open the smoke-mode copy, Run > Run All Cells, wait until the kernel is idle with no
    cell queued, then: every code cell has an execution count, no output is a traceback (or
    an error in the notebook's model), no widget failed to render, and in 04_playground the
    controls show and redraw the figure."""
    name = notebook.name
    n_code = bs.code_cell_count(lab.root / name)
    start = time.perf_counter()
    try:
        state = _open_and_run(page, lab, name)
        found = bs.problems(state, n_code)
        if found:
            pytest.fail(f"{name} in JupyterLab:\n" + "\n".join(found), pytrace=False)
        if notebook.stem == "04_playground":
            _check_playground(page, artifacts)
    finally:
        try:
            shot = bs.screenshot_notebook(page, artifacts / f"{notebook.stem}.png")
        except Exception as err:  # noqa: BLE001  (never hide the test's own failure)
            shot = f"(none: {type(err).__name__}: {err})"
        _report(capsys, f"{name}: {time.perf_counter() - start:.0f} s in JupyterLab, screenshot {shot}")


def _check_playground(page, artifacts: Path) -> None:
    """The playground's controls are there and visible, and a new preset and a moved slider
    each redraw the figure (the image changes once the kernel is idle again)."""
    from playwright.sync_api import expect

    from labkit.feedback_terms import FEEDBACK_TERMS
    from labkit.terms import TERMS

    box = page.locator(".jp-OutputArea-output > .jupyter-widgets.widget-vbox",
                       has=page.locator(".widget-dropdown > label", has_text=re.compile(r"^preset$")))
    expect(box).to_have_count(1)
    expect(box).to_be_visible()
    sliders = box.locator(".widget-slider")
    n_sliders = len(TERMS) + len(FEEDBACK_TERMS) + 1  # one per theta_r and phi_s, and "samples"
    expect(sliders).to_have_count(n_sliders)
    for i in range(n_sliders):
        expect(sliders.nth(i).locator(".noUi-handle")).to_be_visible()
    expect(box.locator(".widget-dropdown")).to_have_count(2)  # preset, feedback
    preset = box.locator(".widget-dropdown", has=page.locator("label", has_text=re.compile(r"^preset$")))
    preset = preset.locator("select")
    expect(preset).to_be_visible()
    box.screenshot(path=str(artifacts / "04_playground_widgets_before.png"))

    src = bs.figure_src(page)
    # The check can fail: choosing the preset that is already selected changes nothing.
    current = preset.input_value()
    preset.select_option(value=current)
    with pytest.raises(AssertionError, match="did not change"):
        bs.wait_for_new_figure(page, src, 5_000, f"re-selecting preset {current!r}")

    # A new preset: the sliders take its values and the figure is redrawn.
    options = [o.get_attribute("value") for o in preset.locator("option").all()]
    new = next(o for o in ["FA (lr only)", *options] if o in options and o != current)
    preset.select_option(value=new)
    after_preset = bs.wait_for_new_figure(page, src, UPDATE_TIMEOUT_MS, f"choosing preset {new!r}")
    expect(box.locator(".widget-html-content").first).to_contain_text(f"{new}:")  # the preset's source line

    # Move the eHebb slider (theta_2) one step with the keyboard: it redraws on release.
    handle = sliders.nth(1 + 2).locator(".noUi-handle")
    before_value = handle.get_attribute("aria-valuetext")
    handle.focus()
    handle.press("ArrowRight")
    after_slider = bs.wait_for_new_figure(page, after_preset, UPDATE_TIMEOUT_MS, "moving the theta_2 slider")
    assert handle.get_attribute("aria-valuetext") != before_value
    box.screenshot(path=str(artifacts / "04_playground_widgets_after.png"))

    digests = [hashlib.sha256(s.encode()).hexdigest()[:12] for s in (src, after_preset, after_slider)]
    assert len(set(digests)) == 3, digests
    state = bs.notebook_state(page)
    found = bs.problems(state, state["codeCells"])
    assert not found, "04_playground after the widget changes:\n" + "\n".join(found)


def test_the_checks_catch_a_broken_notebook(lab, page):
    """The checks can fail: in a notebook whose third cell raises ZeroDivisionError and whose
    second cell shows a view of a widget that does not exist, the traceback is found (in the
    page and in the output model), the last cell stays unexecuted, the widget is reported as
    not rendered, and a plain warning on stderr in the first cell is not taken for an error."""
    name = "zz_raises.ipynb"
    state = _open_and_run(page, lab, name)
    assert [t["cell"] for t in state["tracebacks"]] == [3], state["tracebacks"]
    assert "ZeroDivisionError" in state["tracebacks"][0]["text"]
    if state["modelErrors"] is not None:
        assert [e["cell"] for e in state["modelErrors"]] == [3], state["modelErrors"]
    assert state["unexecuted"] == 1 and state["prompts"][:3] == ["[1]:", "[2]:", "[3]:"], state["prompts"]
    assert state["widgetErrors"], state
    found = bs.problems(state, 4)
    for expected in ("shows a traceback", "has an error output", "without an execution count",
                     "a widget failed to render"):
        assert any(expected in p for p in found), (expected, found)
    assert not any("a warning on stderr" in p for p in found), found
