"""DAW projects as the edited side of a pair: the editor's items, read exactly, become labels.

A corrected edit comes back from a DAW as a project, not only as audio: a Reaper
project (``.rpp``), an OpenTimelineIO timeline (``.otio``) or an EditPlan
(``NAME.plan.json``, what ``make infer`` and the review page write). A project says
what was done, so nothing is aligned:

1. ``read_rpp`` / ``read_otio`` / ``read_plan_json`` (``read_project`` picks by name):
   the project's items as ``ProjectItem`` records, in seconds: where each plays in the
   edit, which raw second it starts at, its speed and direction, its level, fades and
   treatments, and the file it plays. RPP is parsed by hand (a text format of ``<CHUNK``
   ... ``>`` blocks of whitespace-separated tokens); OTIO with ``opentimelineio``.
   Every problem is one ``ParameterError`` line naming the file (and the line).
2. ``check_sources``: every item plays the raw recording of the pair: the same file
   (the path as written, relative to the project's folder, or a file of that name in
   the raw's folder, ``training_data/raw/``), or a file with the same bytes. An item
   over another file, or a project over no file, is refused in one line.
3. ``timeline``: the items in edit order as one track: overlaps (a DAW's crossfades)
   are cut at their middle, item fades no longer than the crossfade or Reaper's 10 ms
   default are click guards, not fades; what the vocabulary has no word for (silence
   between items, a looped source, pitch shift, plug-ins, envelopes) becomes a note.
4. ``project_plan``: the EditPlan of those items on a beat grid, ops as written (the
   exports of envs/export.py read back to the plan they came from: a test);
   ``project_alignment``: the same items as an ``Alignment`` with confidence 1.0, so
   that ``label_project`` makes its labels with the code that labels audio pairs
   (``alignment.labels.labels_from_alignment``: the vocabulary's gains and fades, the
   editor's grid, the oracle actions, what the labels lose).
"""

from __future__ import annotations

import filecmp
import hashlib
import math
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from alignment.result import AlignedSegment, Alignment, SegmentEffects, master_gain, unmatched_spans
from alignment.labels import EditedProject, PairLabels, labels_from_alignment, raw_grid
from datasets.audio import Audio, load_audio
from datasets.beats import BeatGrid
from datasets.errors import EditorError, ParameterError
from datasets.pairs import project_name
from envs.plan import EditPlan, Ops, Segment

__all__ = [
    "ProjectItem", "Project", "read_rpp", "read_otio", "read_plan_json", "read_project", "is_project",
    "check_sources", "timeline", "project_plan", "project_alignment", "label_project", "CLICK_FADE_S",
]

#: Item fades this short are click guards, not an editor's fade: Reaper gives every new
#: item 10 ms fades and the renderer crossfades every cut over 10 ms; the vocabulary's
#: shortest fade is an eighth of a beat at 200 BPM (37.5 ms, envs/actions.FADE_FRACTION).
CLICK_FADE_S = 0.03
#: Overlaps longer than this are a musical crossfade the vocabulary cannot play (it cuts
#: at the middle): worth a note. The exporter's join crossfades are 10 ms.
WIDE_OVERLAP_S = 0.1
#: Tolerance (s) for "the same time" between items (RPP writes 9 decimals, OTIO samples).
_EPS = 1e-6


@dataclass(frozen=True)
class ProjectItem:
    """One item (Reaper) or clip (OTIO) or segment (plan) of a project, in seconds.

    index : 1-based number of the item in the file (for messages)
    edit_start, edit_end : where it plays in the edit
    raw_at_start : the raw second heard at ``edit_start`` (the later end of the raw
        span when reversed)
    rate : raw seconds per edit second (2.0 = double time), > 0
    gain_db, fade_in_s, fade_out_s, eq_low_db, eq_high_db, distortion, reverb : as
        ``envs.plan.Ops``; fades as written (``timeline`` drops click guards)
    source : the file the item plays, as written in the project (None: no file)
    """

    index: int
    edit_start: float
    edit_end: float
    raw_at_start: float
    rate: float = 1.0
    reversed: bool = False
    gain_db: float = 0.0
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0
    eq_low_db: float = 0.0
    eq_high_db: float = 0.0
    distortion: float = 0.0
    reverb: float = 0.0
    source: str | None = None

    @property
    def raw_span(self) -> tuple[float, float]:
        """(start, end) raw seconds the item plays, start < end whatever the direction."""
        d = self.rate * (self.edit_end - self.edit_start)
        return (self.raw_at_start - d, self.raw_at_start) if self.reversed else (self.raw_at_start, self.raw_at_start + d)

    def trimmed(self, start: float, end: float) -> "ProjectItem":
        """The item cut to edit times [start, end] (its raw span follows)."""
        step = self.rate * (start - self.edit_start)
        return replace(self, edit_start=start, edit_end=end,
                       raw_at_start=self.raw_at_start - step if self.reversed else self.raw_at_start + step)

    @property
    def ops(self) -> Ops:
        return Ops(gain_db=self.gain_db, fade_in_s=self.fade_in_s, fade_out_s=self.fade_out_s,
                   eq_low_db=self.eq_low_db, eq_high_db=self.eq_high_db, distortion=self.distortion,
                   reverb=self.reverb, time_factor=self.rate, reversed=self.reversed)


@dataclass(frozen=True, eq=False)
class Project:
    """A project file read: its items in file order and what the reader left out.

    kind : "rpp" | "otio" | "plan"
    sha256 : hash of the file's bytes (the label record names it)
    daw_fades : item fades are a DAW's (click guards and crossfades included), not ops
    plan : the EditPlan itself (kind "plan" only; its ``source_sha256`` names the raw)
    """

    path: str
    kind: str
    items: tuple[ProjectItem, ...]
    sha256: str
    notes: tuple[str, ...] = ()
    daw_fades: bool = True
    plan: EditPlan | None = None


def is_project(path: str | os.PathLike) -> bool:
    """True for ``NAME.rpp``, ``NAME.otio`` and ``NAME.plan.json`` (datasets.pairs)."""
    return project_name(path) is not None


def _read_text(path: str | os.PathLike) -> tuple[str, str]:
    """(text, sha256 of the bytes) of a project file, or one line saying why not."""
    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"{p}: project file not found" if not p.exists() else f"{p}: is not a file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # Reaper on Windows may write the system code page
    return text, hashlib.sha256(data).hexdigest()


def _num(tokens: list[str], i: int, key: str, where: str, default: float | None = None) -> float:
    """Field ``i`` of a line as a finite float (``default`` when the line is short)."""
    if i + 1 >= len(tokens):
        if default is None:
            raise ParameterError(f"{where}: {key} has no value")
        return default
    try:
        v = float(tokens[i + 1])
    except ValueError:
        raise ParameterError(f"{where}: {key} field {i + 1} is not a number ({tokens[i + 1]!r})") from None
    if not math.isfinite(v):
        raise ParameterError(f"{where}: {key} field {i + 1} is not finite ({tokens[i + 1]!r})")
    return v


# ---------------------------------------------------------------------------------
# Reaper (.rpp)

#: One token: a "double", 'single' or `backtick` quoted string (Reaper picks a quote the
#: text does not contain), or a run of non-blanks.
_RPP_TOKEN = re.compile(r'"([^"]*)"|\'([^\']*)\'|`([^`]*)`|(\S+)')


def _tokens(line: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in _RPP_TOKEN.finditer(line)]


@dataclass
class _Chunk:
    """``<NAME args`` ... ``>``: its lines (line number, tokens) and sub-chunks, in order."""

    name: str
    args: list[str]
    line: int
    body: list  # (int, list[str]) | _Chunk

    def lines(self, key: str) -> list[tuple[int, list[str]]]:
        return [e for e in self.body if isinstance(e, tuple) and e[1] and e[1][0].upper() == key]

    def chunks(self, name: str) -> list["_Chunk"]:
        return [e for e in self.body if isinstance(e, _Chunk) and e.name == name]


def _parse_rpp(text: str, path: str) -> _Chunk:
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not first.upper().startswith("<REAPER_PROJECT"):
        raise ParameterError(f"{path}: not a Reaper project (starts with {first[:40]!r}, not <REAPER_PROJECT)")
    root: _Chunk | None = None
    stack: list[_Chunk] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("<"):
            toks = _tokens(line[1:])
            if not toks:
                raise ParameterError(f"{path}: line {n}: '<' opens a chunk without a name")
            c = _Chunk(toks[0].upper(), toks[1:], n, [])
            if stack:
                stack[-1].body.append(c)
            elif root is None:
                root = c
            else:
                raise ParameterError(f"{path}: line {n}: a second top-level chunk <{c.name}> after the project's end")
            stack.append(c)
        elif line == ">":
            if not stack:
                raise ParameterError(f"{path}: line {n}: '>' closes no open chunk")
            stack.pop()
        elif not stack:
            raise ParameterError(f"{path}: line {n}: text outside the <REAPER_PROJECT> chunk ({line[:40]!r})")
        else:
            stack[-1].body.append((n, _tokens(line)))
    if stack:
        raise ParameterError(f"{path}: <{stack[-1].name}> opened on line {stack[-1].line} is never closed (file cut short?)")
    assert root is not None  # the first line opened it
    return root


#: Treatments the exporter writes into an item's name (no item-level field holds them).
_NAME_OPS = {
    "eq_low_db": re.compile(r"low shelf ([+-]?\d+(?:\.\d+)?) dB"),
    "eq_high_db": re.compile(r"high shelf ([+-]?\d+(?:\.\d+)?) dB"),
    "distortion": re.compile(r"distortion (\d+(?:\.\d+)?) dB drive"),
    "reverb": re.compile(r"reverb (\d+(?:\.\d+)?) wet"),
}


def _rpp_source(chunk: _Chunk, path: str) -> tuple[str | None, tuple[float, float, bool] | None]:
    """(file, section) of a <SOURCE> chunk: section = (start s, length s, reversed) for
    a SECTION source (Reaper's reversed or trimmed source: MODE bit 2 reverses), else None."""
    kind = chunk.args[0].upper() if chunk.args else ""
    if kind == "SECTION":
        start = length = 0.0
        mode = 0
        for n, t in (e for e in chunk.body if isinstance(e, tuple)):
            key = t[0].upper() if t else ""
            if key == "STARTPOS":
                start = _num(t, 0, key, f"{path}: line {n}")
            elif key == "LENGTH":
                length = _num(t, 0, key, f"{path}: line {n}")
            elif key == "MODE":
                mode = int(_num(t, 0, key, f"{path}: line {n}"))
        inner = chunk.chunks("SOURCE")
        file = _rpp_source(inner[0], path)[0] if inner else None
        return file, (start, length, bool(mode & 2))
    files = chunk.lines("FILE")
    return (files[0][1][1] if files and len(files[0][1]) > 1 else None), None


def _rpp_item(item: _Chunk, index: int, path: str) -> tuple[ProjectItem | None, list[str]]:
    """One <ITEM>: its active take as a ``ProjectItem`` (None when muted or silent)."""
    notes: list[str] = []
    at = f"{path}: item {index} (line {item.line})"
    # takes: the lines before the first TAKE line are the item's and its first take's
    takes: list[list] = [[]]
    selected = 0
    for e in item.body:
        if isinstance(e, tuple) and e[1] and e[1][0].upper() == "TAKE":
            takes.append([])
            if any(t.upper() == "SEL" for t in e[1][1:]):
                selected = len(takes) - 1
            continue
        takes[-1].append(e)
    head = _Chunk("ITEM", [], item.line, takes[0])
    take = _Chunk("TAKE", [], item.line, takes[selected])
    if len(takes) > 1:
        notes.append(f"item {index}: take {selected + 1} of {len(takes)} (the selected one) is the edit")

    def one(chunk: _Chunk, key: str, i: int, default: float | None = None) -> float:
        found = chunk.lines(key)
        if not found:
            if default is None:
                raise ParameterError(f"{at}: no {key} line")
            return default
        n, toks = found[0]
        return _num(toks, i, key, f"{path}: line {n}", default)

    mute = one(head, "MUTE", 0, 0.0)
    if mute:
        notes.append(f"item {index} is muted: left out")
        return None, notes
    pos = one(head, "POSITION", 0)
    length = one(head, "LENGTH", 0)
    if length <= 0:
        raise ParameterError(f"{at}: LENGTH {length:g} s, an item must last")
    fade_in = max(one(head, "FADEIN", 1, 0.0), one(head, "FADEIN", 2, 0.0))  # length, auto-crossfade length
    fade_out = max(one(head, "FADEOUT", 1, 0.0), one(head, "FADEOUT", 2, 0.0))
    # VOLPAN: field 1 the item's volume, field 3 the take's (linear; negative flips polarity)
    vol = abs(one(head, "VOLPAN", 0, 1.0)) * abs(one(take, "VOLPAN", 2, 1.0))
    if vol <= 1e-6:
        notes.append(f"item {index} has volume 0 (silent): left out")
        return None, notes
    soffs = one(take, "SOFFS", 0, 0.0)
    rate = one(take, "PLAYRATE", 0, 1.0)
    if not rate > 0:
        raise ParameterError(f"{at}: PLAYRATE {rate:g}, a play rate must be > 0")
    if one(take, "PLAYRATE", 2, 0.0):
        notes.append(f"item {index}: pitch shift {one(take, 'PLAYRATE', 2, 0.0):+g} semitones left out (no such action)")
    if rate != 1.0 and not one(take, "PLAYRATE", 1, 1.0):
        notes.append(f"item {index}: play rate {rate:g} without pitch preservation labelled as a time change")
    sources = take.chunks("SOURCE")
    file, section = _rpp_source(sources[0], path) if sources else (None, None)
    if section is None:
        raw_at_start, rev = soffs, False
    else:
        start, sec_len, rev = section
        raw_at_start = start + sec_len - soffs if rev else start + soffs
    names = take.lines("NAME")
    name = names[0][1][1] if names and len(names[0][1]) > 1 else ""
    fx = {k: float(m.group(1)) for k, rx in _NAME_OPS.items() if (m := rx.search(name))}
    for env in ("VOLENV", "PANENV", "MUTEENV", "PITCHENV"):
        if item.chunks(env) or take.chunks(env):
            notes.append(f"item {index}: {env.lower()} envelope left out (the vocabulary has one level per segment)")
    if take.chunks("TAKEFX"):
        notes.append(f"item {index}: take FX left out (add them as EQ/distortion/reverb in the item's name)")
    it = ProjectItem(
        index=index, edit_start=pos, edit_end=pos + length, raw_at_start=raw_at_start, rate=rate, reversed=rev,
        gain_db=round(20.0 * math.log10(vol), 2), fade_in_s=fade_in, fade_out_s=fade_out, source=file, **fx,
    )
    return it, notes


def read_rpp(path: str | os.PathLike) -> Project:
    """A Reaper project's items (every track's; ``timeline`` wants them on one)."""
    text, sha = _read_text(path)
    root = _parse_rpp(text, str(path))
    items: list[ProjectItem] = []
    notes: list[str] = []
    k = 0
    tracks_with_items = 0
    for track in root.chunks("TRACK"):
        muted = any(t[1:2] and t[1] == "1" for _, t in track.lines("MUTESOLO"))
        found = track.chunks("ITEM")
        if muted and found:
            notes.append(f"track on line {track.line} is muted: its {len(found)} item(s) left out")
            k += len(found)
            continue
        tracks_with_items += bool(found)
        for item in found:
            k += 1
            it, n = _rpp_item(item, k, str(path))
            notes += n
            if it is not None:
                items.append(it)
    if tracks_with_items > 1:
        raise ParameterError(f"{path}: items on {tracks_with_items} tracks; the edit must be one track (mute the others)")
    return Project(path=str(path), kind="rpp", items=tuple(items), sha256=sha, notes=tuple(notes))


# ---------------------------------------------------------------------------------
# OpenTimelineIO (.otio)


def _url_path(url: str) -> str:
    if url.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlparse(url).path)
    return url


def read_otio(path: str | os.PathLike) -> Project:
    """The clips of an OTIO timeline's one audio track (the editor's ops from each clip's
    ``metadata["editor"]``, as envs/export.py writes them, where present)."""
    import opentimelineio as otio

    _, sha = _read_text(path)
    try:
        tl = otio.adapters.read_from_file(str(path))
    except Exception as exc:  # the adapters raise many kinds; one line says which
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParameterError(f"{path}: not a readable OpenTimelineIO file ({msg[:120]})") from None
    if not isinstance(tl, otio.schema.Timeline):
        raise ParameterError(f"{path}: holds a {type(tl).__name__}, not an OpenTimelineIO Timeline")
    tracks = [t for t in tl.tracks if any(isinstance(c, otio.schema.Clip) for c in t)]
    audio = [t for t in tracks if t.kind == otio.schema.TrackKind.Audio]
    tracks = audio or tracks
    if len(tracks) > 1:
        raise ParameterError(f"{path}: clips on {len(tracks)} audio tracks; the edit must be one track")
    items: list[ProjectItem] = []
    notes: list[str] = []
    pos = 0.0
    k = 0
    for child in tracks[0] if tracks else []:
        if isinstance(child, otio.schema.Transition):
            continue  # a crossfade at a join: takes no time in the track
        dur = child.duration().to_seconds()
        if not isinstance(child, otio.schema.Clip):  # a Gap (silence) or a nested stack
            if not isinstance(child, otio.schema.Gap):
                notes.append(f"{type(child).__name__} at {pos:.2f} s left out (played as silence)")
            pos += dur
            continue
        k += 1
        src_range = child.source_range or child.available_range()
        start = src_range.start_time.to_seconds()
        speed, rev = 1.0, False
        for eff in child.effects:
            if isinstance(eff, otio.schema.LinearTimeWarp) and not isinstance(eff, otio.schema.FreezeFrame):
                speed *= abs(float(eff.time_scalar))
                rev ^= float(eff.time_scalar) < 0
            else:
                notes.append(f"clip {k} ({child.name}): effect {eff.effect_name or type(eff).__name__} left out")
        if not speed > 0:
            raise ParameterError(f"{path}: clip {k} ({child.name}) has speed 0 (a freeze frame); no raw material plays")
        ref = child.media_reference
        source = _url_path(ref.target_url) if isinstance(ref, otio.schema.ExternalReference) and ref.target_url else None
        ops = dict((child.metadata.get("editor") or {}).get("ops") or {})
        raw_len = dur * speed
        items.append(ProjectItem(
            index=k, edit_start=pos, edit_end=pos + dur, raw_at_start=start + raw_len if rev else start, rate=speed,
            reversed=rev, source=source,
            **{f: float(ops.get(f, 0.0)) for f in ("gain_db", "fade_in_s", "fade_out_s", "eq_low_db", "eq_high_db",
                                                   "distortion", "reverb")},
        ))
        pos += dur
    return Project(path=str(path), kind="otio", items=tuple(items), sha256=sha, notes=tuple(notes), daw_fades=False)


# ---------------------------------------------------------------------------------
# EditPlan (NAME.plan.json)


def read_plan_json(path: str | os.PathLike) -> Project:
    """An EditPlan saved as JSON (``make infer``'s ``NAME.plan.json``, the review page's
    corrections): its segments back to back as items over the raw it names by hash."""
    text, sha = _read_text(path)
    try:
        plan = EditPlan.from_json(text)
    except ParameterError as exc:
        raise ParameterError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise ParameterError(f"{path}: not an EditPlan ({type(exc).__name__}: {str(exc)[:80]})") from None
    items = []
    pos = 0.0
    for k, s in enumerate(plan.segments, 1):
        t0, t1 = plan.segment_seconds(s)
        d = (t1 - t0) / s.ops.time_factor
        o = s.ops
        items.append(ProjectItem(
            index=k, edit_start=pos, edit_end=pos + d, raw_at_start=t1 if o.reversed else t0, rate=o.time_factor,
            reversed=o.reversed, gain_db=o.gain_db, fade_in_s=o.fade_in_s, fade_out_s=o.fade_out_s,
            eq_low_db=o.eq_low_db, eq_high_db=o.eq_high_db, distortion=o.distortion, reverb=o.reverb,
        ))
        pos += d
    return Project(path=str(path), kind="plan", items=tuple(items), sha256=sha, daw_fades=False, plan=plan)


_READERS = {".rpp": read_rpp, ".otio": read_otio, ".plan.json": read_plan_json}


def read_project(path: str | os.PathLike) -> Project:
    """Read a project by its name's ending (``datasets.pairs.PROJECT_SUFFIXES``)."""
    low = Path(path).name.lower()
    for suffix, reader in _READERS.items():
        if low.endswith(suffix):
            return reader(path)
    raise ParameterError(f"{path}: not a project (expected NAME.rpp, NAME.otio or NAME.plan.json)")


# ---------------------------------------------------------------------------------
# the raw recording the items play


def _plays_raw(source: str, project_dir: Path, raw: Path) -> bool:
    """True when ``source`` (as written in the project) is the raw recording."""
    name = (PureWindowsPath if "\\" in source else PurePosixPath)(source).name
    written = Path(source)
    candidates = [written] if written.is_absolute() else [project_dir / written]
    candidates.append(raw.parent / name)  # by name inside the raw's folder (training_data/raw/)
    for c in candidates:
        if c.is_file():
            return c.resolve() == raw.resolve() or filecmp.cmp(c, raw, shallow=False)
    # nowhere on this machine (a project from another computer): the raw's own name
    return name == raw.name or Path(name).stem == raw.stem


def check_sources(project: Project, raw: Audio) -> None:
    """Raise ``ParameterError`` (one line naming the file) unless the project plays ``raw``.

    A plan names its raw by the audio's hash; DAW items by file (``_plays_raw``).
    """
    raw_path = Path(raw.path)
    if project.kind == "plan":
        assert project.plan is not None
        h = project.plan.source_sha256
        if h and h != raw.sha256:
            raise ParameterError(
                f"{project.path}: the plan was made for other audio ({h[:12]}), not {raw_path} ({raw.sha256[:12]})")
        if abs(project.plan.grid.duration - raw.duration) > 0.1:
            raise ParameterError(f"{project.path}: the plan's beat grid lasts {project.plan.grid.duration:.2f} s, "
                                 f"{raw_path} {raw.duration:.2f} s: made for another recording")
        return
    if not any(it.source for it in project.items):
        raise ParameterError(f"{project.path}: no item plays an audio file (expected items over {raw_path})")
    where = Path(project.path).parent
    for it in project.items:
        if it.source and not _plays_raw(it.source, where, raw_path):
            raise ParameterError(f"{project.path}: item {it.index} plays {it.source}, not the raw recording {raw_path}")


# ---------------------------------------------------------------------------------
# items -> one track -> plan / alignment


def timeline(project: Project, *, raw_duration: float) -> tuple[list[ProjectItem], list[str]]:
    """The project's items as one track in edit order, and notes on what was changed.

    Items without a file are left out; an item inside another (layered audio) is an
    error; overlapping items are cut at the middle of the overlap (the renderer's
    crossfade is centred on the cut); a DAW's item fades no longer than the overlap or
    ``CLICK_FADE_S`` are dropped; raw spans are clipped to the raw; the edit starts
    at the first item.
    """
    notes: list[str] = list(project.notes)
    empty = [it.index for it in project.items if it.source is None and project.kind != "plan"]
    if empty:
        notes.append(f"item(s) {', '.join(map(str, empty))} play no audio file: left out")
    items = sorted((it for it in project.items if it.source is not None or project.kind == "plan"),
                   key=lambda it: (it.edit_start, it.index))
    if not items:
        raise ParameterError(f"{project.path}: no item to label")
    for p, c in zip(items, items[1:]):
        if c.edit_end <= p.edit_end + _EPS or c.edit_start <= p.edit_start + _EPS:
            raise ParameterError(f"{project.path}: item {c.index} plays inside item {p.index} "
                                 f"({c.edit_start:.3f}-{c.edit_end:.3f} s); the edit must be one item at a time")
    over = [max(0.0, p.edit_end - c.edit_start) for p, c in zip(items, items[1:])]
    out: list[ProjectItem] = []
    for i, it in enumerate(items):
        o_in = over[i - 1] if i > 0 else 0.0
        o_out = over[i] if i < len(over) else 0.0
        fin, fout = it.fade_in_s, it.fade_out_s
        if project.daw_fades:  # a fade no longer than the crossfade or a click guard is no fade
            fin = round(fin, 6) if fin > max(o_in, CLICK_FADE_S) + _EPS else 0.0
            fout = round(fout, 6) if fout > max(o_out, CLICK_FADE_S) + _EPS else 0.0
        if o_out > WIDE_OVERLAP_S:
            notes.append(f"items {it.index} and {items[i + 1].index} overlap by {o_out:.2f} s: labelled as a cut at its middle")
        start = it.edit_start + o_in / 2
        end = it.edit_end - o_out / 2
        out.append(replace(it.trimmed(start, end), fade_in_s=fin, fade_out_s=fout))
    for p, c in zip(out, out[1:]):
        if c.edit_start - p.edit_end > CLICK_FADE_S:
            notes.append(f"{c.edit_start - p.edit_end:.2f} s of silence before item {c.index} left out (no such action)")
    # the raw's bounds: a looped or slipped source reaches past them
    clipped: list[ProjectItem] = []
    for it in out:
        lo, hi = it.raw_span
        if lo < -1e-3 or hi > raw_duration + 1e-3:
            notes.append(f"item {it.index} plays raw {lo:.2f}-{hi:.2f} s, past the raw's 0-{raw_duration:.2f} s "
                         "(a looped source?): labelled inside the raw")
            a = it.edit_start + max(0.0, (hi - raw_duration) if it.reversed else -lo) / it.rate
            b = it.edit_end - max(0.0, -lo if it.reversed else hi - raw_duration) / it.rate
            if b - a <= _EPS:
                continue
            it = it.trimmed(a, b)
        clipped.append(it)
    if not clipped:
        raise ParameterError(f"{project.path}: no item plays any of the raw recording")
    t0 = clipped[0].edit_start
    return [replace(it, edit_start=it.edit_start - t0, edit_end=it.edit_end - t0) for it in clipped], notes


def _nearest(grid: BeatGrid, t: float) -> int:
    return int(np.argmin(np.abs(grid.bounds - t)))


def project_plan(project: Project, grid: BeatGrid, *, source_sha256: str = "") -> EditPlan:
    """The project as an EditPlan on ``grid``: one segment per item (its raw span
    snapped to the nearest beat lines), with the item's ops as written.

    An export of ``envs.export`` reads back to the layout's pieces of the plan it came
    from (``envs.render.layout(plan).pieces``: the plan with what sounds the same joined).
    """
    items, _ = timeline(project, raw_duration=grid.duration)
    segs = []
    for it in items:
        lo, hi = it.raw_span
        a, b = _nearest(grid, lo), _nearest(grid, hi)
        if b > a:
            segs.append(Segment(a, b, it.ops))
    if not segs:
        raise ParameterError(f"{project.path}: no item spans a whole beat of the raw")
    h = source_sha256 or (project.plan.source_sha256 if project.plan is not None else "")
    return EditPlan(segments=tuple(segs), grid=grid, source_sha256=h).validate()


def project_alignment(project: Project, *, raw_duration: float) -> tuple[Alignment, list[str]]:
    """The items as the aligner's result, exact and certain (confidence 1.0, fidelity 0),
    so that labels come from the same code as an audio pair's. Levels count, as for
    audio, relative to the edit's median level (a level on the whole edit is mastering,
    not an edit). Returns (alignment, notes)."""
    items, notes = timeline(project, raw_duration=raw_duration)
    segs = []
    effects = []
    for it in items:
        lo, hi = it.raw_span
        segs.append(AlignedSegment(edit_start=it.edit_start, edit_end=it.edit_end, raw_start=lo, raw_end=hi,
                                   gain_db=it.gain_db, fade_in_s=it.fade_in_s, fade_out_s=it.fade_out_s, confidence=1.0))
        effects.append(SegmentEffects(time_factor=it.rate, reversed=it.reversed, eq_low_db=it.eq_low_db,
                                      eq_high_db=it.eq_high_db))
        if it.distortion or it.reverb:
            notes.append(f"item {it.index}: distortion/reverb not labelled (labels carry gain, EQ, fades, "
                         "reverse and speed, as for audio pairs)")
    dur = segs[-1].edit_end
    al = Alignment(
        segments=tuple(segs), effects=tuple(effects), confidence=1.0, fidelity=0.0, unmatched=tuple(unmatched_spans(segs, dur)),
        master_gain_db=master_gain(segs), edit_duration=dur, raw_duration=raw_duration,
    )
    return al, notes


def label_project(
    raw_path: str | os.PathLike,
    project_path: str | os.PathLike,
    *,
    grid: BeatGrid | None = None,
    editor_grid: bool = True,
    with_actions: bool = True,
) -> PairLabels:
    """Labels of a raw recording and a project of its edit, as ``label_pair`` makes
    them for audio (same record), with confidence 1.0 and no fidelity measured.

    Raises ``ParameterError`` (one line naming the file) for an unreadable project or
    one that plays another file or none, ``AudioError`` for an unusable raw.
    """
    t0 = time.perf_counter()
    project = read_project(project_path)  # one line about the project before any decoding
    raw = load_audio(raw_path)
    check_sources(project, raw)
    if grid is None:
        grid = raw_grid(raw)
    al, notes = project_alignment(project, raw_duration=raw.duration)
    try:
        return labels_from_alignment(
            al, raw=raw, edited=EditedProject(path=project.path, sha256=project.sha256, kind=project.kind), grid=grid,
            with_actions=with_actions, with_fidelity=False, editor_grid=editor_grid, t0=t0, project_notes=tuple(notes),
        )
    except EditorError as exc:
        if str(exc).startswith(project.path):
            raise
        raise EditorError(f"{project.path}: {exc}") from None
