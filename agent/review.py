"""The review page: listen to an edit, correct it phrase by phrase, save it as a training pair.

    python -m agent.review runs/infer/song                 # the folder `make infer` wrote
    python -m agent.review runs/infer/song --data training_data --port 8765 --no-browser
    make review OUT=runs/infer/song

Serves one page on 127.0.0.1 (a free port unless ``--port``), prints its URL and opens it
in the browser when there is a display. The page (``agent/review_static/``, plain JS and
CSS, nothing from the network) plays the raw recording and the edit, draws the raw
waveform from peaks computed here with its bars and phrases, each phrase kept / cut /
repeated, and lets the musician toggle a phrase with one click or drag a cut's edge to
another bar line (``agent.review_plan``). Every change re-renders the plan with the
project's renderer (``envs.render.render``, as ``agent.infer`` does) into a preview the
page loads at once. "Save as training pair" writes the corrected plan, in the JSON every
plan is written in (``envs.export.write_json``: ``EditPlan.to_dict`` plus its output
timeline), as ``DATA/edited/NAME.plan.json``, and puts the untouched raw recording beside
it as ``DATA/raw/NAME.ext`` (a hard link, or a copy across filesystems) unless that file
already holds the same recording: ``make align`` then reads the pair.

Saving never replaces a different pair silently: a different ``NAME.plan.json``, or an
edited recording ``edited/NAME.wav`` (which the plan would replace as the pair's edit in
``make align``: ``datasets.pairs`` takes a project over audio of one name), only when the
request says ``overwrite`` (the page asks first); a DAW project of that name
(``NAME.rpp``, ``NAME.otio``: two projects of one name stop ``make align``) or a
different recording under ``raw/NAME.*``, never (save under another name).

The folder is found as ``agent.infer`` writes it: ``NAME.plan.json`` (``--name`` when the
folder holds several), the raw recording the plan was made from (``--raw``, else the file
``NAME.rpp`` or ``NAME.otio`` references; its decoded audio must hash to the plan's
``source_sha256``), and ``NAME_edited.wav`` / ``.flac`` when present (else the edit is
rendered on start).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from datasets.atomic import atomic_path, locked_folder
from datasets.errors import EditorError, ParameterError
from datasets.pairs import AUDIO_EXTENSIONS, project_name
from datasets.safety import refuse_overwrite

__all__ = ["ReviewFolder", "ReviewSession", "SaveConflict", "find_review", "peaks", "create_app", "serve", "main"]

log = logging.getLogger("agent.review")

STATIC = Path(__file__).resolve().parent / "review_static"
#: Waveform columns sent to the page: ~2 per CSS pixel of a 1000-px canvas, 16 KB of JSON.
PEAK_COLUMNS = 2000
#: Previews kept on disk: the page plays the newest; one older file covers a request
#: that was already on its way when the next edit landed.
KEEP_PREVIEWS = 3
#: A pair name becomes a file name in DATA/raw and DATA/edited: no folders, no dot first.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,119}$")
_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
         ".opus": "audio/ogg", ".mp3": "audio/mpeg", ".aif": "audio/aiff", ".aiff": "audio/aiff"}


class SaveConflict(EditorError):
    """Saving would replace a different pair. ``overwritable``: the request may say
    ``overwrite`` to replace it (a different NAME.plan.json); otherwise another name."""

    def __init__(self, message: str, *, overwritable: bool):
        super().__init__(message)
        self.overwritable = overwritable


@dataclass(frozen=True)
class ReviewFolder:
    """What the review page needs from an output folder of ``agent.infer``."""

    folder: Path
    name: str
    plan: Path
    raw: Path
    edit_audio: Path | None


def _referenced_raw(folder: Path, name: str) -> Path | None:
    """The raw recording NAME.rpp (first item's FILE) or NAME.otio (first media
    reference) points at, when the file exists."""
    rpp = folder / f"{name}.rpp"
    if rpp.is_file():
        m = re.search(r"^\s*FILE\s+(\"[^\"]*\"|'[^']*')", rpp.read_text(encoding="utf-8", errors="replace"), re.M)
        if m and Path(m.group(1)[1:-1]).is_file():
            return Path(m.group(1)[1:-1])
    otio = folder / f"{name}.otio"
    if otio.is_file():
        m = re.search(r'"target_url":\s*"([^"]+)"', otio.read_text(encoding="utf-8", errors="replace"))
        if m:
            url = m.group(1)
            p = Path(urlparse(url).path if url.startswith("file:") else url)
            if p.is_file():
                return p
    return None


def find_review(folder: str | os.PathLike, *, name: str | None = None, raw: str | os.PathLike | None = None) -> ReviewFolder:
    """Find the plan, the raw recording and the edit in ``folder``; one-line
    ``EditorError`` naming what is missing."""
    d = Path(folder)
    if not d.is_dir():
        raise EditorError(f"{d}: not a folder (give the output folder of make infer, e.g. runs/infer/song)")
    if name is None:
        plans = sorted(p.name.removesuffix(".plan.json") for p in d.glob("*.plan.json"))
        if not plans:
            raise EditorError(f"{d}: no NAME.plan.json here (is it an output folder of make infer?)")
        if len(plans) > 1:
            raise EditorError(f"{d}: holds the edits of {', '.join(plans)}; choose one with --name")
        name = plans[0]
    plan = d / f"{name}.plan.json"
    if not plan.is_file():
        raise EditorError(f"{plan}: plan not found")
    raw_path = Path(raw) if raw is not None else _referenced_raw(d, name)
    if raw_path is None:
        raise EditorError(f"{d}: cannot tell which recording {name}.plan.json edits ({name}.rpp names none that exists); give --raw RAW")
    if not raw_path.is_file():
        raise EditorError(f"{raw_path}: raw recording not found")
    edit = next((p for p in (d / f"{name}_edited.wav", d / f"{name}_edited.flac", d / f"{name}.wav", d / f"{name}.flac")
                 if p.is_file() and not _same_file(p, raw_path)), None)
    return ReviewFolder(folder=d, name=name, plan=plan, raw=raw_path, edit_audio=edit)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def peaks(y: np.ndarray, *, columns: int = PEAK_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest sample of the mono mix in each of ``columns`` equal slices.

    y : np.ndarray [shape=(channels, n)] ; returns two arrays [shape=(min(columns, n),)]
    """
    mono = y.mean(axis=0) if y.ndim == 2 else y
    cols = max(1, min(columns, len(mono)))
    edges = np.linspace(0, len(mono), cols + 1).astype(np.int64)
    return np.minimum.reduceat(mono, edges[:-1]), np.maximum.reduceat(mono, edges[:-1])


class ReviewSession:
    """One folder under review: the raw audio, the plan as the tool made it, the plan as
    corrected so far (with an undo history) and the rendered previews. Thread-safe: the
    server answers requests in threads, and every method holds one lock."""

    def __init__(self, found: ReviewFolder, *, data: str | os.PathLike = "training_data"):
        from datasets.audio import load_audio
        from envs.plan import EditPlan

        self.found = found
        self.data = Path(data)
        self.audio = load_audio(found.raw)
        try:
            doc = json.loads(found.plan.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ParameterError(f"{found.plan}: not valid JSON ({exc})") from None
        try:
            self.original = EditPlan.from_dict(doc).validate(source_sha256=self.audio.sha256)
        except ParameterError as exc:
            raise ParameterError(f"{found.plan}: {exc} ({found.raw})") from None
        # render as the plan was rendered (agent.infer --crossfade-ms)
        self.crossfade_ms = float((doc.get("output") or {}).get("crossfade_ms", 10.0))
        self.plan = self.original
        self.history: list = []
        self.version = 0
        self.render_s = 0.0
        self.lock = threading.RLock()
        self._tmp = tempfile.TemporaryDirectory(prefix="review-")
        self._previews: dict[int, Path] = {}
        lo, hi = peaks(self.audio.y)
        self._peaks = {"min": np.round(lo, 4).tolist(), "max": np.round(hi, 4).tolist()}
        if found.edit_audio is not None:
            self._previews[0] = found.edit_audio
            # the first render in a process costs ~0.6 s more (imports, first use of the
            # effects); pay it now, off the request path, so the first click answers fast
            threading.Thread(target=self._warm_up, daemon=True).start()
        else:
            self._render()

    def _warm_up(self) -> None:
        from envs.render import render

        try:
            render(y=self.audio.y, sr=self.audio.sr, plan=self.original, crossfade_ms=self.crossfade_ms)
        except EditorError:  # the first change will say it, on the page
            pass

    def close(self) -> None:
        self._tmp.cleanup()

    # -- the plan ---------------------------------------------------------------------
    def _render(self) -> None:
        """Render the current plan into preview file ``self.version`` (16-bit WAV: half
        the bytes of float, and the page only listens to it)."""
        import soundfile as sf

        from envs.render import render

        t0 = time.perf_counter()
        out = render(y=self.audio.y, sr=self.audio.sr, plan=self.plan, crossfade_ms=self.crossfade_ms)
        path = Path(self._tmp.name) / f"preview-{self.version}.wav"
        sf.write(path, out.y.T, self.audio.sr, subtype="PCM_16")
        self.render_s = time.perf_counter() - t0
        self._previews[self.version] = path
        for v in sorted(self._previews)[:-KEEP_PREVIEWS]:
            old = self._previews.pop(v)
            if old.parent == Path(self._tmp.name):
                old.unlink(missing_ok=True)

    def _change(self, plan) -> dict:
        if plan == self.plan:
            return self.state()
        self.history.append(self.plan)
        self.plan = plan
        self.version += 1
        self._render()
        return self.state()

    def toggle(self, phrase: int) -> dict:
        from agent.review_plan import toggle_phrase

        with self.lock:
            return self._change(toggle_phrase(self.plan, int(phrase)))

    def move_edge(self, edge: int, to: int) -> dict:
        from agent.review_plan import move_edge

        with self.lock:
            return self._change(move_edge(self.plan, int(edge), int(to)))

    def undo(self) -> dict:
        with self.lock:
            if not self.history:
                return self.state()
            self.plan = self.history.pop()
            self.version += 1
            self._render()
            return self.state()

    def reset(self) -> dict:
        with self.lock:
            return self._change(self.original)

    def preview(self, version: int) -> Path | None:
        with self.lock:
            return self._previews.get(version)

    # -- what the page draws ------------------------------------------------------------
    def state(self) -> dict:
        """Everything the page draws, JSON-ready (seconds unless named beats)."""
        from agent.review_plan import bar_lines, cut_edges, phrases
        from envs.export import output_timeline
        from envs.layout import output_duration

        with self.lock:
            plan, g = self.plan, self.plan.grid
            b = g.bounds
            tl = output_timeline(plan, sr=self.audio.sr, crossfade_ms=self.crossfade_ms)
            return {
                "name": self.found.name,
                "raw_name": self.found.raw.name,
                "duration": float(self.audio.y.shape[1] / self.audio.sr),
                "peaks": self._peaks,
                "beats": [round(float(t), 4) for t in b],
                "bars": bar_lines(plan),
                "phrases": [
                    {"index": p.index, "start": p.start, "end": p.end, "t0": float(b[p.start]), "t1": float(b[p.end]),
                     "status": p.status, "effect": p.effect}
                    for p in phrases(plan)
                ],
                "edges": cut_edges(plan),
                "timeline": [
                    {"raw_t0": s["raw_start_sample"] / self.audio.sr, "raw_t1": s["raw_end_sample"] / self.audio.sr,
                     "out_t0": s["out_start_s"], "out_t1": s["out_end_s"], "reversed": bool(s["ops"]["reversed"]),
                     "label": s["label"]}
                    for s in tl["segments"]
                ],
                "keep_ratio": plan.keep_ratio,
                "out_duration": output_duration(plan, self.audio.sr, self.crossfade_ms),
                "tempo": float(g.tempo),
                "beats_per_bar": int(g.beats_per_bar),
                "version": self.version,
                "preview_url": f"/audio/preview/{self.version}",
                "render_s": self.render_s if self.version else None,
                "changed": plan != self.original,
                "can_undo": bool(self.history),
                "data": str(self.data),
            }

    # -- saving -------------------------------------------------------------------------
    def save(self, name: str | None = None, *, overwrite: bool = False) -> dict:
        """Write the current plan as DATA/edited/NAME.plan.json with the raw recording as
        DATA/raw/NAME.ext. Raises ``SaveConflict`` when that would replace a different
        pair (see the module docstring), ``ParameterError`` for a bad name."""
        from envs.export import plan_json

        name = (name or self.found.name).strip()
        if not _NAME.match(name) or name.lower().endswith(".plan"):
            raise ParameterError(f"{name!r} cannot name a pair (letters, digits, space, _ . + -; no folders)")
        edited_dir, raw_dir = self.data / "edited", self.data / "raw"
        plan_path = edited_dir / f"{name}.plan.json"
        raw_target = raw_dir / f"{name}{self.found.raw.suffix.lower()}"
        with self.lock:
            text = plan_json(self.plan, sr=self.audio.sr, crossfade_ms=self.crossfade_ms)
            # the review's own inputs are never written (a folder under review inside DATA)
            refuse_overwrite([plan_path, raw_target], [self.found.plan, self.found.folder])
            edited_dir.mkdir(parents=True, exist_ok=True)
            with locked_folder(edited_dir):  # two pages saving at once: one after the other
                projects = [p for p in edited_dir.iterdir() if p.is_file() and p != plan_path and project_name(p) == name]
                if projects:  # two projects of one name: make align could not choose
                    raise SaveConflict(f"{projects[0]} is already the edited side of pair '{name}'; save under another name",
                                       overwritable=False)
                audio = [p for p in edited_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and p.stem == name]
                if audio and not overwrite:  # the plan would take over as that pair's edit
                    raise SaveConflict(f"{audio[0]} is the edited side of pair '{name}': the plan would replace it in make align "
                                       "(the audio stays); save anyway?", overwritable=True)
                raw_action = self._check_raw(raw_dir, name)
                plan_action = "written"
                if plan_path.exists():
                    if plan_path.read_text(encoding="utf-8") == text:
                        plan_action = "unchanged"
                    elif not overwrite:
                        raise SaveConflict(f"{plan_path} exists and holds a different edit; overwrite it?", overwritable=True)
                    else:
                        plan_action = "replaced"
                if raw_action is None:
                    raw_action = _link_or_copy(self.found.raw, raw_target)
                else:
                    raw_target = raw_action[1]
                    raw_action = "already there"
                if plan_action != "unchanged":
                    with atomic_path(plan_path, suffix=".json") as tmp:
                        tmp.write_text(text, encoding="utf-8", newline="\n")
        log.info("saved %s (%s) with raw %s (%s)", plan_path, plan_action, raw_target, raw_action)
        return {"plan": str(plan_path), "plan_action": plan_action, "raw": str(raw_target), "raw_action": raw_action,
                "name": name}

    def _check_raw(self, raw_dir: Path, name: str) -> tuple[str, Path] | None:
        """None when DATA/raw holds no recording named ``name``; ("same", path) when it
        holds this one; ``SaveConflict`` when it holds another."""
        from datasets.audio import load_audio

        if not raw_dir.is_dir():
            return None
        found = [p for p in raw_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and p.stem == name]
        if not found:
            return None
        for p in found:
            same = _same_file(p, self.found.raw) or filecmp.cmp(p, self.found.raw, shallow=False)
            if not same:
                try:
                    same = load_audio(p).sha256 == self.audio.sha256
                except EditorError:
                    same = False
            if not same:
                raise SaveConflict(f"{p} is a different recording; save under another name", overwritable=False)
        return ("same", found[0])


def _link_or_copy(src: Path, dst: Path) -> str:
    """Put ``src`` at ``dst`` without touching ``src``: a hard link (no second copy of
    a long recording), or a copy where links cannot cross filesystems. Atomic."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, suffix=src.suffix) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
            how = "linked"
        except OSError:
            shutil.copy2(src, tmp)
            how = "copied"
    return how


# ---------------------------------------------------------------------------------------
# The web app
# ---------------------------------------------------------------------------------------
def create_app(session: ReviewSession):
    """The Flask app serving ``session``: the page, its static files, the audio and a
    JSON API (``GET /api/state``; ``POST /api/toggle {phrase}``, ``/api/move_edge {edge,
    to}``, ``/api/undo``, ``/api/reset``, ``/api/save {name, overwrite}``)."""
    from flask import Flask, abort, jsonify, request, send_file

    app = Flask("agent.review", static_folder=str(STATIC), static_url_path="/static")

    @app.before_request
    def _local_only():
        # Another web page the musician has open may send requests to 127.0.0.1: accept
        # only this page's own host (no DNS rebinding) and, for changes, JSON from no other
        # origin (a cross-site JSON POST needs a CORS preflight this app never grants).
        host = (request.host or "").rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            abort(403)
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if (origin and urlparse(origin).netloc != request.host) or not request.is_json:
                abort(403)

    @app.errorhandler(EditorError)
    def _user_error(exc: EditorError):
        if isinstance(exc, SaveConflict):
            return jsonify(conflict=str(exc), overwritable=exc.overwritable), 409
        return jsonify(error=str(exc)), 400

    def _body() -> dict:
        body = request.get_json(silent=True)
        return body if isinstance(body, dict) else {}

    def _int(body: dict, key: str) -> int:
        v = body.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ParameterError(f"{key} must be a whole number, got {v!r}")
        return v

    @app.get("/")
    def index():
        return send_file(STATIC / "index.html", mimetype="text/html", max_age=0)

    @app.get("/api/state")
    def state():
        return jsonify(session.state())

    @app.post("/api/toggle")
    def toggle():
        return jsonify(session.toggle(_int(_body(), "phrase")))

    @app.post("/api/move_edge")
    def move():
        b = _body()
        return jsonify(session.move_edge(_int(b, "edge"), _int(b, "to")))

    @app.post("/api/undo")
    def undo():
        return jsonify(session.undo())

    @app.post("/api/reset")
    def reset():
        return jsonify(session.reset())

    @app.post("/api/save")
    def save():
        b = _body()
        return jsonify(session.save(b.get("name"), overwrite=b.get("overwrite") is True))

    @app.get("/audio/raw")
    def raw_audio():
        p = session.found.raw
        return send_file(p, mimetype=_MIME.get(p.suffix.lower(), "application/octet-stream"), conditional=True, max_age=0)

    @app.get("/audio/preview/<int:version>")
    def preview(version: int):
        p = session.preview(version)
        if p is None or not p.is_file():
            abort(404)
        return send_file(p, mimetype=_MIME.get(p.suffix.lower(), "audio/wav"), conditional=True, max_age=0)

    return app


def _has_display() -> bool:
    """A browser window can open: a desktop session, or macOS / Windows."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def serve(session: ReviewSession, *, port: int = 0, open_browser: bool = True, ready=None) -> None:
    """Serve ``session`` on 127.0.0.1:``port`` (0: a free port) until interrupted.
    ``ready(url)`` is called once the socket listens (default: print the URL)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, create_app(session), threaded=True)
    url = f"http://127.0.0.1:{server.server_port}/"
    (ready or (lambda u: print(f"review page: {u}  (Ctrl-C to stop)", flush=True)))(url)
    if open_browser and _has_display():
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    finally:
        server.server_close()


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.review", description="Review and correct an edit; save it as a training pair.")
    p.add_argument("folder", help="output folder of make infer / python -m agent.infer (NAME.plan.json, NAME.rpp, ...)")
    p.add_argument("--name", help="which edit, when the folder holds several (NAME of NAME.plan.json)")
    p.add_argument("--raw", help="the raw recording (default: the file NAME.rpp references)")
    p.add_argument("--data", default="training_data", help="training data folder saved pairs go to (default: training_data)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_parser().parse_args(argv)
    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port (0-65535)", file=sys.stderr)
        return 2
    try:
        session = ReviewSession(find_review(args.folder, name=args.name, raw=args.raw), data=args.data)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        serve(session, port=args.port, open_browser=not args.no_browser)
    except OSError as exc:  # the port is taken
        print(f"error: cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
