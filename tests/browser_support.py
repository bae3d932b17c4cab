"""Helpers of ``tests/test_browser.py``: find a Chromium, prepare smoke-mode copies of the
notebooks, start and stop a JupyterLab server, and read a notebook's state from the page.

Nothing here is a test; the module imports neither playwright nor papermill at import time,
so ``test_browser.py`` can skip (or, in CI, fail) with a clear message when they are missing.
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
RESULTS_DIR = ROOT / "results"
NOTEBOOKS = sorted(NB_DIR.glob("0*.ipynb"))
KERNEL = "python3"

#: Where the browser is looked for, in this order: $LABKIT_CHROMIUM, then these on PATH.
CHROMIUM_ENV = "LABKIT_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a headless Chromium run as root on a machine without network access.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
]
HOW_TO_GET_CHROMIUM = (
    "install Chromium (Debian/Ubuntu: `sudo apt-get install chromium` (Ubuntu: chromium-browser); "
    "Fedora: `sudo dnf install chromium`; macOS: `brew install --cask chromium`) "
    f"or point ${CHROMIUM_ENV} at a Chromium or Google Chrome executable"
)
HOW_TO_GET_PLAYWRIGHT = (
    "install the project's dependencies (`.venv/bin/pip install -e .`, which includes playwright); "
    "no `playwright install` is needed, the test uses the system's Chromium"
)


def in_ci() -> bool:
    """True when the environment says CI (``CI=true``, as GitHub Actions, GitLab and most CI
    systems set it): there a missing browser or playwright fails the test instead of skipping it."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def find_chromium() -> tuple[str | None, str]:
    """``(executable, how it was found)``; ``(None, why not)`` when there is none.

    ``$LABKIT_CHROMIUM`` wins; if it is set it must name an executable file (a wrong setting is
    reported, not silently replaced by another browser)."""
    env = os.environ.get(CHROMIUM_ENV, "").strip()
    if env:
        path = shutil.which(env) or env
        if Path(path).is_file() and os.access(path, os.X_OK):
            return str(Path(path)), f"${CHROMIUM_ENV}"
        return None, f"${CHROMIUM_ENV}={env!r} is not an executable file"
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found, f"{name} on PATH"
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium", "/usr/bin/chromium"
    return None, f"no Chromium found (${CHROMIUM_ENV} unset; none of {', '.join(CHROMIUM_NAMES)} on PATH)"


# ----------------------------------------------------------------------------- notebooks


def parameter_names(notebook: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters``-tagged cell."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", ())]
    assert len(cells) == 1, f"{notebook.name}: expected one cell tagged 'parameters', found {len(cells)}"
    names = set()
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for t in targets:
            for n in ast.walk(t) if t is not None else ():
                if isinstance(n, ast.Name):
                    names.add(n.id)
    return names


def smoke_copy(notebook: Path, dest_dir: Path, fig_dir: Path) -> Path:
    """A copy of ``notebook`` in ``dest_dir`` with papermill's parameters cell injected
    (prepare-only: nothing is executed): SMOKE=True, RESULTS_DIR = the repository's results/
    (absolute, since relative paths break outside notebooks/), FIG_DIR = ``fig_dir``."""
    import papermill

    names = parameter_names(notebook)
    wanted = {"SMOKE": True, "RESULTS_DIR": str(RESULTS_DIR), "FIG_DIR": str(fig_dir)}
    missing = sorted(set(wanted) - names)
    assert not missing, f"{notebook.name}: its parameters cell lacks {missing}; cannot run it in smoke mode"
    out = dest_dir / notebook.name
    papermill.execute_notebook(str(notebook), str(out), parameters=wanted, prepare_only=True,
                               kernel_name=KERNEL, progress_bar=False)
    return out


def code_cell_count(notebook: Path) -> int:
    import nbformat

    return sum(c.cell_type == "code" for c in nbformat.read(notebook, as_version=4).cells)


def write_notebook(path: Path, sources: list[str]) -> Path:
    """A small notebook of code cells (kernel python3), e.g. one that raises."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


# ----------------------------------------------------------------------------- kernel


def _same_interpreter(argv0: str) -> bool:
    """Does a kernelspec's argv[0] start this interpreter? (as in tests/test_notebooks.py:
    "python" is replaced by the server's sys.executable by jupyter_client, so it counts)."""
    if argv0 in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        return True
    try:
        return (Path(argv0).resolve() == Path(sys.executable).resolve()
                or Path(argv0).parent.resolve() == Path(sys.executable).parent.resolve())
    except OSError:
        return False


def venv_kernel_env(env: dict[str, str], scratch: Path) -> dict[str, str]:
    """``env`` with kernel ``python3`` starting this (the venv's) interpreter, the approach of
    the ``venv_kernel`` fixture of tests/test_notebooks.py: if no ``python3`` kernelspec exists
    or the one that wins belongs to another interpreter, install one of this interpreter into
    ``scratch`` and put it first on JUPYTER_PATH. The lookup runs with ``env`` (the server's)."""
    from ipykernel import kernelspec as ipk
    from jupyter_client.kernelspec import KernelSpecManager

    def spec_argv0(e: dict[str, str]) -> str | None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(e)
        try:
            ksm = KernelSpecManager()
            return ksm.get_kernel_spec(KERNEL).argv[0] if KERNEL in ksm.find_kernel_specs() else None
        finally:
            os.environ.clear()
            os.environ.update(saved)

    env = dict(env)
    argv0 = spec_argv0(env)
    if argv0 is None or not _same_interpreter(argv0):
        ipk.install(prefix=str(scratch), kernel_name=KERNEL)
        env["JUPYTER_PATH"] = os.pathsep.join([str(scratch / "share" / "jupyter"),
                                               *filter(None, [env.get("JUPYTER_PATH")])])
        argv0 = spec_argv0(env)
    assert argv0 is not None and _same_interpreter(argv0), f"kernel {KERNEL} starts {argv0}, not {sys.executable}"
    return env


# ----------------------------------------------------------------------------- server

#: User settings for the test's JupyterLab (a fresh settings folder: a user's own settings
#: cannot interfere). Every cell stays in the DOM (no windowing), no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class JupyterLab:
    """A JupyterLab server on 127.0.0.1 with a random token, serving ``root``."""

    root: Path
    state: Path  # settings, workspaces, runtime and log live here
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--LabApp.user_settings_dir={self.state / 'settings'}",
               f"--LabApp.workspaces_dir={self.state / 'workspaces'}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        return cmd

    def start(self, env: dict[str, str], timeout: float = 180.0) -> JupyterLab:
        for rel, values in LAB_SETTINGS.items():
            path = self.state / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = dict(env, JUPYTER_RUNTIME_DIR=str(self.state / "runtime"), JUPYTER_CONFIG_DIR=str(self.state / "config"))
        self.log = self.state / "jupyterlab.log"
        for _ in range(3):  # the free port may be taken between finding and binding it
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(self.command(), cwd=self.root, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"JupyterLab did not start; its log ({self.log}):\n{self.log.read_text()[-4000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                self.api("GET", "/api/status", timeout=5)
                return True
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        return False

    def api(self, method: str, path: str, timeout: float = 30):
        req = urllib.request.Request(self.base_url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Shut down every kernel (and its session): one notebook at a time keeps the CPU free."""
        for s in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{s['id']}")
        for k in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{k['id']}")

    def stop(self) -> None:
        """Stop the server and everything it started (its kernels share its process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):  # the server may be the thing that broke
            self.shutdown_kernels()
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


# ----------------------------------------------------------------------------- the page

#: Text that marks a Python traceback in a rendered output. JupyterLab 4 renders an error
#: output (output_type "error") exactly like a stderr stream: a ``.jp-OutputArea-output``
#: with ``data-mime-type="application/vnd.jupyter.stderr"`` (the model also carries
#: application/vnd.jupyter.error, which no renderer takes), so an error is told apart from a
#: harmless warning on stderr by its text: IPython's tracebacks contain "Traceback (most
#: recent call last)" or, for syntax errors, "Cell In[<n>], line <m>"; plain Python ones
#: (printed by a library) "File "...", line <m>".
TRACEBACK_RE = r'Traceback \(most recent call last\)|Cell In\[\d+\], line \d+|File "[^"]*", line \d+'
STDERR = 'application/vnd.jupyter.stderr'
WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json'

#: One JS function that reads the open notebook's state from the DOM (and, where JupyterLab
#: exposes it with --LabApp.expose_app_in_browser, the kernel's status and the output models).
STATE_JS = """
() => {
  const panels = document.querySelectorAll('.jp-NotebookPanel');
  const nb = panels.length === 1 ? panels[0].querySelector('.jp-Notebook') : null;
  if (!nb) return {ready: false, panels: panels.length};
  const re = new RegExp(__RE__, 'm');
  const cells = Array.from(nb.querySelectorAll(':scope .jp-Cell'));
  const code = cells.filter(c => c.classList.contains('jp-CodeCell'));
  const prompts = code.map(c => (c.querySelector('.jp-InputArea-prompt')?.textContent || '').trim());
  const tracebacks = [];
  code.forEach((c, i) => c.querySelectorAll('.jp-OutputArea-output[data-mime-type=__STDERR__]').forEach(o => {
    if (re.test(o.textContent)) tracebacks.push({cell: i + 1, text: o.textContent.slice(-1500)});
  }));
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  const kernel = w && w.sessionContext && w.sessionContext.session ? w.sessionContext.session.kernel : null;
  let modelErrors = null, modelWidgetViews = null;
  if (w && w.content && w.content.model) {
    modelErrors = [];
    modelWidgetViews = 0;
    const mcells = w.content.model.cells;
    let k = -1;
    for (let j = 0; j < mcells.length; j++) {
      const m = mcells.get(j);
      if (m.type !== 'code') continue;
      k++;
      for (const o of m.outputs.toJSON()) {
        if (o.output_type === 'error') modelErrors.push({cell: k + 1, text: o.ename + ': ' + o.evalue});
        if (o.data && o.data[__WIDGET__]) modelWidgetViews++;
      }
    }
  }
  return {
    ready: true,
    codeCells: code.length,
    prompts,
    busy: prompts.filter(p => p.includes('*')).length,
    unexecuted: prompts.filter(p => !/^\\[\\d+\\]:?$/.test(p)).length,
    indicator: nb.closest('.jp-NotebookPanel').querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status || null,
    kernelName: kernel ? kernel.name : null,
    kernelStatus: kernel ? kernel.status : (app ? 'no kernel' : null),
    tracebacks,
    modelErrors,
    loadingWidgets: Array.from(nb.querySelectorAll('.jp-OutputArea-output'))
      .filter(o => o.textContent.trim() === 'Loading widget...').length,
    widgetErrors: (nb.textContent.match(/Error displaying widget[^\\n]{0,200}/g) || []),
    modelWidgetViews,
    renderedWidgetViews: Array.from(nb.querySelectorAll('.jp-OutputArea-output > .jupyter-widgets'))
      .filter(v => !v.parentElement.closest('.jupyter-widgets')).length,
  };
}
""".replace("__RE__", json.dumps(TRACEBACK_RE)).replace("__STDERR__", json.dumps(STDERR)).replace(
    "__WIDGET__", json.dumps(WIDGET_VIEW))

#: True once the run is over: the kernel is idle, no cell is queued or running, and either
#: every code cell has an execution count or an error stopped the run (JupyterLab then leaves
#: the later cells unexecuted, so waiting for their counts would only time out).
FINISHED_JS = """
() => {
  const s = (__STATE__)();
  if (!s.ready) return false;
  const idle = s.indicator === 'idle' && (s.kernelStatus === null || s.kernelStatus === 'idle');
  const errors = s.tracebacks.length + (s.modelErrors ? s.modelErrors.length : 0);
  return idle && s.busy === 0 && (s.unexecuted === 0 || errors > 0);
}
""".replace("__STATE__", STATE_JS.strip())

KERNEL_READY_JS = """
() => {
  const s = (__STATE__)();
  // kernelStatus is null only where JupyterLab does not expose its app: the indicator decides
  return s.ready && s.indicator === 'idle' && (s.kernelStatus === null || s.kernelStatus === 'idle');
}
""".replace("__STATE__", STATE_JS.strip())


def notebook_state(page) -> dict:
    return page.evaluate(STATE_JS)


def open_notebook(page, lab: JupyterLab, name: str, timeout_ms: float) -> None:
    """Open ``name`` (in its own, fresh workspace) and wait until its kernel is idle; a kernel
    selection dialog, if JupyterLab shows one, is answered with the preferred kernel."""
    workspace = re.sub(r"[^A-Za-z0-9_-]", "-", Path(name).stem)
    page.goto(f"{lab.base_url}/lab/workspaces/{workspace}/tree/{name}?token={lab.token}", timeout=timeout_ms)
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and dialog.first.is_visible():
            dialog.locator(".jp-mod-accept").first.click()
        try:
            page.wait_for_function(KERNEL_READY_JS, timeout=2000, polling=250)
            return
        except Exception:  # noqa: BLE001  (playwright's TimeoutError: look for a dialog again)
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: the kernel did not become idle: {notebook_state(page)}") from None


def run_all_cells(page) -> None:
    """Run > Run All Cells, from the menu bar, as a student would."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:not(.lm-mod-hidden)", has_text=re.compile(r"^Run All Cells")).first.click()


def wait_until_finished(page, timeout_ms: float, widget_timeout_ms: float = 60_000) -> dict:
    """Wait until the run is over (FINISHED_JS), then until no widget view still says
    "Loading widget..." (a view waits for its model and then shows the widget, or "Error
    displaying widget"); returns the notebook's state. A widget that stays loading is left
    for :func:`problems` to report."""
    page.wait_for_function(FINISHED_JS, timeout=timeout_ms, polling=500)
    with contextlib.suppress(Exception):  # playwright's TimeoutError: problems() reports it
        page.wait_for_function(f"() => ({STATE_JS.strip()})().loadingWidgets === 0",
                               timeout=widget_timeout_ms, polling=500)
    return notebook_state(page)


SCROLLER_JS = """() => document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')
                      || document.querySelector('.jp-NotebookPanel .jp-Notebook')"""


def screenshot_notebook(page, path: Path, max_height: int = 16000) -> Path:
    """A screenshot of the whole notebook: the window is made as tall as the notebook's
    content for the shot (JupyterLab scrolls inside the notebook, not the page), up to
    ``max_height`` pixels."""
    size = page.viewport_size
    extra = page.evaluate(f"() => {{ const s = ({SCROLLER_JS})(); if (!s) return 0; s.scrollTop = 0; "
                          f"return s.scrollHeight - s.clientHeight; }}")
    try:
        if extra > 0:
            page.set_viewport_size({"width": size["width"], "height": min(max_height, size["height"] + int(extra))})
            with contextlib.suppress(Exception):  # JupyterLab lays itself out again; else a partial shot
                page.wait_for_function(
                    f"() => {{ const s = ({SCROLLER_JS})(); return s && (s.scrollHeight - s.clientHeight <= 2"
                    f" || window.innerHeight >= {max_height}); }}", timeout=10_000, polling=200)
                page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    return path


def problems(state: dict, n_code_cells: int) -> list[str]:
    """What is wrong with a notebook after "Run All Cells" (empty if nothing): the checks of
    tests/test_browser.py, in one place so that they can be shown to fail."""
    out = []
    if not state.get("ready"):
        return [f"no single open notebook on the page: {state}"]
    if state["codeCells"] != n_code_cells:
        out.append(f"{state['codeCells']} code cells in the page, {n_code_cells} in the file")
    for t in state["tracebacks"]:
        out.append(f"code cell {t['cell']} of {state['codeCells']} shows a traceback:\n{t['text']}")
    for e in state["modelErrors"] or ():
        out.append(f"code cell {e['cell']} of {state['codeCells']} has an error output: {e['text']}")
    if state["busy"]:
        out.append(f"{state['busy']} cells still queued or running: {state['prompts']}")
    if state["unexecuted"]:
        out.append(f"{state['unexecuted']} code cells without an execution count: {state['prompts']}")
    if state["kernelStatus"] not in (None, "idle") or state["indicator"] != "idle":
        out.append(f"kernel not idle: {state['kernelStatus']} (indicator {state['indicator']})")
    if state["loadingWidgets"]:
        out.append(f"{state['loadingWidgets']} widgets still show 'Loading widget...'")
    for w in state["widgetErrors"]:
        out.append(f"a widget failed to render: {w}")
    if state["modelWidgetViews"] is not None and state["renderedWidgetViews"] != state["modelWidgetViews"]:
        out.append(f"{state['modelWidgetViews']} widget outputs, "
                   f"but {state['renderedWidgetViews']} rendered as widgets")
    return out


#: The playground's figure: the one image in the Output widget of a widget view.
FIGURE_SELECTOR = (".jp-OutputArea-output > .jupyter-widgets .widget-output "
                   ".jp-OutputArea-output[data-mime-type='image/png'] img")
FIGURE_CHANGED_JS = """
([selector, old]) => {
  const imgs = document.querySelectorAll(selector);
  const s = (__STATE__)();
  if (s.tracebacks.length) return true;  // a redraw that failed: reported at once
  if (imgs.length !== 1 || !imgs[0].complete || imgs[0].src === old) return false;
  return s.indicator === 'idle' && (s.kernelStatus === null || s.kernelStatus === 'idle');
}
""".replace("__STATE__", STATE_JS.strip())


def figure_src(page) -> str:
    imgs = page.locator(FIGURE_SELECTOR)
    n = imgs.count()
    assert n == 1, f"expected one figure in the playground's output widget, found {n}"
    src = imgs.get_attribute("src") or ""
    assert src.startswith("data:image/png;base64,"), f"the playground's figure is no PNG: {src[:60]!r}"
    return src


def wait_for_new_figure(page, old_src: str, timeout_ms: float, what: str) -> str:
    """Wait until the playground shows a figure other than ``old_src`` and the kernel is idle
    again; returns the new image's src. AssertionError if the figure did not change."""
    try:
        page.wait_for_function(FIGURE_CHANGED_JS, arg=[FIGURE_SELECTOR, old_src], timeout=timeout_ms, polling=500)
    except Exception as err:  # playwright's TimeoutError
        if "Timeout" not in type(err).__name__ and "Timeout" not in str(err):
            raise
        now = page.locator(FIGURE_SELECTOR)
        same = now.count() == 1 and now.get_attribute("src") == old_src
        raise AssertionError(f"the playground's figure did not change within {timeout_ms / 1000:g} s after {what}"
                             f" ({'the same image' if same else f'{now.count()} images'} is shown)") from None
    tracebacks = notebook_state(page)["tracebacks"]
    assert not tracebacks, f"redrawing the playground after {what} failed:\n" + "\n".join(t["text"] for t in tracebacks)
    return figure_src(page)
