#!/usr/bin/env python3
"""Screenshot TensorBoard's HParams, scalars and custom-scalars pages for a finished run.

    python docs/screenshot_tensorboard.py runs/NAME            # writes docs/img/tensorboard_*.png

Starts ``tensorboard`` on 127.0.0.1 (free port) over the run directory, opens each page in
headless Chromium (driven over the DevTools protocol on a pipe, ``--remote-debugging-pipe``,
so nothing beyond the standard library and a ``chromium`` binary is needed), waits until the
page has really rendered the trials (HParams table rows, scalar chart lines), screenshots it,
and stops TensorBoard.  Run ``sweeps/aggregate.py RUN`` first: the HParams sessions, the
accuracy-vs-eps curves and the custom-scalars layout are written by the aggregation.

Written files (``--out``, default ``docs/img``):

* ``tensorboard_hparams.png``        HParams table view: one row per trial, hparams + metrics
* ``tensorboard_scalars.png``        scalars page: per-epoch ``val/*`` and ``train/*`` curves of every trial
* ``tensorboard_custom_scalars.png`` custom scalars: accuracy vs test eps per method (smoothing 0)

Ray Tune also writes its own event files (``RUN/tune/<id>/events.out.tfevents.*``, hparams
named ``trial/*``); they add a second, differently-keyed copy of every trial to the HParams
table.  When they are present the script serves only ``RUN/trials`` and ``RUN/aggregate/tb``
(``--logdir_spec``); ``--whole-run`` serves the whole run directory as ``--logdir RUN`` would.

Exit status 0 on success; 1 with one ``error:`` line when Chromium or TensorBoard is missing,
the run has no TensorBoard data, or a page shows no data within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# hparams columns / metric columns shown in the HParams table (those absent are skipped)
HPARAM_COLUMNS = ["defense", "eps", "lam"]
METRIC_COLUMNS = ["clean_acc", "worst/eps_0.1", "worst/eps_0.2"]


class Fail(Exception):
    """A one-line, user-facing failure."""


# --------------------------------------------------------------------------- Chromium over CDP
class Chromium:
    """Headless Chromium driven over the DevTools protocol on fds 3/4 (--remote-debugging-pipe)."""

    def __init__(self, binary: str, profile: str, size: tuple[int, int]):
        to_r, to_w = os.pipe()  # us -> browser: the browser reads fd 3
        from_r, from_w = os.pipe()  # browser -> us: the browser writes fd 4

        def child_fds():  # move the pipe ends to fds 3 and 4 in the child
            hi_r = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)
            hi_w = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            preexec_fn=child_fds,
            pass_fds=(3, 4),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self._w, self._r = to_w, from_r
        self._buf = b""
        self._id = 0
        self.session: str | None = None
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True
        )["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False},
        )
        self.call("Page.enable")

    def call(self, method: str, params: dict | None = None, timeout: float = 30, browser: bool = False):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise Fail(f"chromium: {method} failed: {reply['error'].get('message')}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fail(f"chromium: no reply to {method} within {timeout:.0f}s")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise Fail(f"chromium exited (status {self.proc.poll()}) during {method}")
                self._buf += chunk

    def js(self, body: str):
        """Evaluate ``body`` (a function body that may use deepAll/deepOne) and return its value."""
        expr = "(() => {" + JS_HELPERS + body + "\n})()"
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise Fail(
                f"page script error: {d.get('exception', {}).get('description', d.get('text'))}".splitlines()[
                    0
                ]
            )
        return r.get("result", {}).get("value")

    def goto(self, url: str):
        self.call("Page.navigate", {"url": url})

    def wait(self, body: str, timeout: float, what: str):
        """Poll the JS ``body`` until it returns a truthy value; Fail with ``what`` on timeout."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.js(body)
            if last:
                return last
            time.sleep(0.5)
        raise Fail(f"{what} (waited {timeout:.0f}s)")

    def screenshot(self, path: Path):
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self):
        try:
            self.call("Browser.close", browser=True, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


# TensorBoard's legacy dashboards live in nested shadow roots: query through all of them.
JS_HELPERS = r"""
const deepAll = (sel, root = document) => { const out = [];
  const walk = (r) => { for (const el of r.querySelectorAll('*')) {
    if (el.matches(sel)) out.push(el); if (el.shadowRoot) walk(el.shadowRoot); } };
  walk(root.shadowRoot || root); return out; };
const deepOne = (sel, root = document) => deepAll(sel, root)[0] || null;
const drawnLines = (root) => deepAll('path.line', root).filter(p => (p.getAttribute('d') || '').length > 8).length;
"""

HPARAMS_READY = r"""
const qp = deepOne('tf-hparams-query-pane'); const grid = deepOne('vaadin-grid');
if (!qp || !grid || !qp._hparams || !qp.sessionGroups) return null;
const names = qp.sessionGroups.map(g => g.name);
return names.length ? names : null;
"""

HPARAMS_ARRANGE = r"""
const qp = deepOne('tf-hparams-query-pane');
const hp = new Set(%s), m = new Set(%s);
const hpNames = qp._hparams.map(h => h.info.name), mNames = qp._metrics.map(x => x.info.name.tag);
if (hpNames.some(n => hp.has(n))) qp._hparams.forEach((h, i) => qp.set('_hparams.' + i + '.displayed', hp.has(h.info.name)));
if (mNames.some(n => m.has(n))) qp._metrics.forEach((x, i) => qp.set('_metrics.' + i + '.displayed', m.has(x.info.name.tag)));
return {hparams: hpNames, metrics: mNames};
"""

HPARAMS_COLUMNS = r"""
// widen "Trial ID" to the longest trial name, share the rest of the grid among the other columns
const names = new Set(%s), grid = deepOne('vaadin-grid'), cols = deepAll('vaadin-grid-column');
if (!grid || cols.length < 3) return null;
const cells = deepAll('vaadin-grid-cell-content'), idCells = cells.filter(c => names.has(c.textContent.trim()));
if (!idCells.length) return null;
const ctx = document.createElement('canvas').getContext('2d');
ctx.font = getComputedStyle(idCells[0]).font;
const idPx = Math.ceil(Math.max(120, ...[...names].map(n => ctx.measureText(n).width))) + 34;
const rest = Math.max(90, Math.floor((grid.clientWidth - idPx - 110 - 20) / (cols.length - 2)));
cols[0].width = idPx + 'px'; cols[0].flexGrow = 0;
cols.slice(2).forEach(c => { c.width = rest + 'px'; c.flexGrow = 0; });
return cells.map(c => c.textContent.trim());
"""

SCALARS_READY = r"""
const dash = deepOne('tf-scalar-dashboard'); if (!dash) return null;
if (dash._ignoreYOutliers) dash._ignoreYOutliers = false;   // show whole curves, not clipped ones
const re = new RegExp(%s);
const cards = deepAll('tf-scalar-card').filter(c => re.test(c.tag || ''));
if (!cards.length) return null;
const lines = cards.map(c => drawnLines(c));
return lines.every(n => n > 0) ? {cards: cards.map(c => c.tag), lines: lines, runs: dash._selectedRuns || []} : null;
"""

CUSTOM_READY = r"""
const dash = deepOne('tf-custom-scalar-dashboard'); if (!dash) return null;
const cards = deepAll('tf-custom-scalar-margin-chart-card, tf-custom-scalar-multi-line-chart-card', dash);
if (!cards.length) return null;
const lines = cards.map(c => drawnLines(c));
return lines.some(n => n > 0) ? {cards: cards.length, lines: lines} : null;
"""


# --------------------------------------------------------------------------- TensorBoard
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard_cmd(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    beside = Path(sys.executable).with_name("tensorboard")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("tensorboard")
    if found:
        return [found]
    raise Fail("tensorboard not found (pip install tensorboard, or pass --tensorboard PATH)")


def find_chromium(explicit: str | None) -> str:
    for cand in [explicit] if explicit else [os.environ.get("CHROMIUM", "")] + list(CHROMIUM_NAMES):
        if cand and (shutil.which(cand) or (os.path.isfile(cand) and os.access(cand, os.X_OK))):
            return shutil.which(cand) or cand
    raise Fail("chromium not found (apt-get install chromium, or pass --chromium PATH)")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode())


def start_tensorboard(cmd: list[str], run: Path, whole_run: bool, port: int, log: Path, timeout: float):
    # served from two levels up with relative paths, so the page shows runs/NAME/..., not /home/...
    cwd, rel = run.parent.parent, Path(run.parent.name) / run.name
    has_tune_events = any((run / "tune").glob("*/events.out.tfevents.*"))
    if whole_run or not has_tune_events:
        logdir = ["--logdir", str(rel)]
    else:
        logdir = ["--logdir_spec", f"trials:{rel / 'trials'},aggregate:{rel / 'aggregate' / 'tb'}"]
    args = cmd + logdir + ["--host", "127.0.0.1", "--port", str(port)]
    print(f"serving (in {cwd}): tensorboard", " ".join(args[len(cmd) :]), flush=True)
    logf = open(log, "w")
    proc = subprocess.Popen(
        args, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    logf.close()  # the child keeps its own copy
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise Fail(f"tensorboard exited with status {proc.returncode}: {tail[0]}")
        try:
            runs = get_json(base + "/data/runs")
            if any(r.startswith("trials/") for r in runs) and any(r.startswith("aggregate/") for r in runs):
                return proc, base, runs
        except OSError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise Fail(
        f"tensorboard on port {port} did not list the run's trials and aggregate within {timeout:.0f}s"
    )


def stop(proc: subprocess.Popen | None):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- pages
def hash_url(base: str, plugin: str, **state) -> str:
    parts = [plugin] + [f"{k}={urllib.parse.quote(str(v), safe='')}" for k, v in state.items()]
    return f"{base}/#" + "&".join(parts)


def settle(br: Chromium, body: str, timeout: float, what: str):
    """Wait until ``body`` is truthy, then until its value stops changing (charts render lazily)."""
    prev = br.wait(body, timeout, what)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        cur = br.wait(body, timeout, what)
        if cur == prev:
            return cur
        prev = cur
    return prev


def shoot_hparams(br: Chromium, base: str, out: Path, timeout: float) -> str:
    br.goto(hash_url(base, "hparams"))
    names = br.wait(HPARAMS_READY, timeout, "HParams page shows no trials (did sweeps/aggregate.py run?)")
    br.js(HPARAMS_ARRANGE % (json.dumps(HPARAM_COLUMNS), json.dumps(METRIC_COLUMNS)))
    time.sleep(1.0)  # let Polymer re-render the table with the chosen columns

    def rows_rendered():
        cells = br.js(HPARAMS_COLUMNS % json.dumps(names)) or []
        return all(any(n == c for c in cells) for n in names)

    deadline = time.monotonic() + timeout
    while not rows_rendered():
        if time.monotonic() > deadline:
            raise Fail("HParams table did not render a row for every trial")
        time.sleep(0.5)
    time.sleep(1.0)
    br.screenshot(out)
    return f"{len(names)} trial rows: " + ", ".join(n.rsplit("/", 1)[-1] for n in names)


def shoot_scalars(br: Chromium, base: str, out: Path, timeout: float) -> str:
    tag_re = r"^(val|train)/"
    br.goto(hash_url(base, "scalars", tagFilter=tag_re, regexInput=r"^trials/", _smoothingWeight=0))
    got = settle(
        br,
        SCALARS_READY % json.dumps(tag_re),
        timeout,
        "scalars page shows no per-epoch curves of the trials (trials/*/tb empty?)",
    )
    br.screenshot(out)
    return f"{len(got['cards'])} charts ({', '.join(got['cards'])}), lines per chart {got['lines']}"


def shoot_custom(br: Chromium, base: str, out: Path, timeout: float) -> str:
    br.goto(
        hash_url(
            base, "custom_scalars", regexInput=r"^aggregate/(tb/)?(curves|jacobian)/", _smoothingWeight=0
        )
    )
    got = settle(
        br, CUSTOM_READY, timeout, "custom scalars page shows no curves (no layout in aggregate/tb?)"
    )
    br.screenshot(out)
    return f"{got['cards']} charts, lines per chart {got['lines']}"


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", type=Path, help="run directory (runs/NAME) after sweeps/aggregate.py")
    ap.add_argument(
        "--out", type=Path, default=REPO / "docs" / "img", help="where the PNGs go (default docs/img)"
    )
    ap.add_argument("--chromium", help="chromium binary (default: $CHROMIUM or chromium on PATH)")
    ap.add_argument("--tensorboard", help="tensorboard executable (default: beside this python, or on PATH)")
    ap.add_argument("--size", default="1600x1000", help="window size WxH (default 1600x1000)")
    ap.add_argument(
        "--timeout", type=float, default=60, help="seconds to wait for each page / for tensorboard"
    )
    ap.add_argument(
        "--whole-run",
        action="store_true",
        help="serve --logdir RUN as-is (includes Ray Tune's own tune/ event files)",
    )
    ap.add_argument("--no-custom", action="store_true", help="skip the custom-scalars screenshot")
    a = ap.parse_args(argv)

    tb = br = None
    tmp = Path(tempfile.mkdtemp(prefix="tb_shot_"))
    try:
        try:
            w, h = (int(x) for x in a.size.lower().split("x"))
        except ValueError:
            raise Fail(f"--size {a.size!r}: expected WIDTHxHEIGHT, e.g. 1600x1000") from None
        chromium = find_chromium(a.chromium)
        cmd = tensorboard_cmd(a.tensorboard)
        run = a.run.resolve()
        for sub in ("trials", "aggregate/tb"):
            if not (run / sub).is_dir():
                raise Fail(
                    f"{run / sub} missing: not a finished, aggregated run "
                    f"(run: python sweeps/aggregate.py {a.run})"
                )
        a.out.mkdir(parents=True, exist_ok=True)

        tb, base, runs = start_tensorboard(
            cmd, run, a.whole_run, free_port(), tmp / "tensorboard.log", a.timeout
        )
        print(f"tensorboard at {base}: {len(runs)} runs", flush=True)
        br = Chromium(chromium, str(tmp / "profile"), (w, h))
        shots = [("tensorboard_hparams.png", shoot_hparams), ("tensorboard_scalars.png", shoot_scalars)]
        if not a.no_custom:
            shots.append(("tensorboard_custom_scalars.png", shoot_custom))
        for name, fn in shots:
            desc = fn(br, base, a.out / name, a.timeout)
            print(f"wrote {a.out / name}: {desc}", flush=True)
        return 0
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if br is not None:
            br.close()
        stop(tb)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
