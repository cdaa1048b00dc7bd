"""From an alignment in seconds to the beat-level EditPlan and the factored labels.

1. ``snap_plan``: each aligned segment's raw span is snapped to the nearest raw beat
   boundaries of the grid the feature pipeline uses (``extract_features(raw).grid``),
   and its treatments are projected onto what the action vocabulary can say
   (envs/actions.py): gain relative to the file's mastering level, rounded to the GAIN
   amounts (|g| < 0.75 dB is none); a fade becomes a FADE_IN / FADE_OUT chunk (a grid
   unit at the segment's edge, the fade a fraction of it) split off the segment;
   reversal / double / half time and one EQ shelf are kept when detected. One
   treatment per segment, in that priority, because one action carries one treatment.
2. ``oracle_actions`` (envs.plan) turns the plan into (type, size, amount) actions,
   checked by the round trip ``execute(grid, actions) == plan.merged()``.
3. ``plan_fidelity``: the plan rendered by envs.render, aligned back to the real
   edited file, and their log-mel distance (dB) on the matched frames.

``label_pair`` runs everything for one raw/edited pair and returns the JSON record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignment.align import AlignConfig, Alignment, align
from alignment.grid import GridPhase, PhaseFit, cut_points, fit_phase
from datasets.audio import ANALYSIS_SR, Audio, load_audio, resample, to_mono
from datasets.beats import BeatGrid
from datasets.errors import AudioError, EditorError
from envs import actions as act
from envs.plan import EditPlan, Ops, Segment

__all__ = ["LABEL_FORMAT_VERSION", "raw_grid", "snap_plan", "plan_actions", "plan_fidelity", "label_pair", "PairLabels"]

log = logging.getLogger(__name__)

#: 2: plans and actions on the editor's phase of the grid (alignment/grid.py).
LABEL_FORMAT_VERSION = 2
#: A gain change smaller than this is no change: two thirds of the smallest GAIN step
#: (1.5 dB), because a mastering compressor leaves +-1 dB of level noise per segment.
GAIN_DEADBAND_DB = 1.0
#: ... and when the edited file went through a compressor, whose attack/release moves
#: segment levels by up to ~1.2 dB that no static curve explains: only a full GAIN
#: step counts (a 1.5 dB edit under a 2:1 compressor measures < 1 dB anyway).
GAIN_DEADBAND_COMPRESSED_DB = 1.5
#: Shelf changes below half the smallest EQ step (3 dB) are no change.
EQ_DEADBAND_DB = 1.5


def raw_grid(raw: Audio) -> BeatGrid:
    """The raw's beat grid, exactly as the feature pipeline computes (and caches) it."""
    from datasets.features import extract_features

    return extract_features(raw).grid


def _units(grid: BeatGrid) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) of the unit of each size containing each beat (as envs.plan)."""
    n = grid.n_beats
    out = []
    for s in act.Size:
        bars = act.SIZE_UNIT_BARS[s]
        ids = np.arange(n) if bars is None else np.asarray(grid.bar) // bars
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        starts = np.r_[0, change]
        ends = np.r_[change, n]
        which = np.repeat(np.arange(len(starts)), ends - starts)
        out.append((starts[which], ends[which]))
    return out


def _nearest_bound(grid: BeatGrid, t: float) -> int:
    return int(np.argmin(np.abs(grid.bounds - t)))


def _quantise(x: float, table: dict, deadband: float) -> float:
    if abs(x) < deadband:
        return 0.0
    vals = np.array(sorted(table.values()))
    return float(vals[np.argmin(np.abs(vals - x))])


def _fade_chunk(grid: BeatGrid, units, a: int, b: int, length: float, at_start: bool) -> tuple[int, float] | None:
    """Best FADE chunk at the start (or end) of [a, b): (other edge beat, fade seconds)."""
    if length <= 0:
        return None
    best = None
    for s in range(len(units)):
        st, en = units[s]
        if at_start:
            e = int(en[a])
            if e > b:
                continue
            dur = grid.bounds[e] - grid.bounds[a]
            edge = e
        else:
            h = int(st[b - 1])
            if int(en[b - 1]) != b or h < a:
                continue
            dur = grid.bounds[b] - grid.bounds[h]
            edge = h
        for frac in act.FADE_FRACTION.values():
            # editors fade over whole units (a 2-bar fade-out); a part of a unit wins
            # only when it fits clearly better (measured fades are +-10 % under a
            # mastering compressor)
            err = abs(frac * dur - length) + (0.0 if frac == 1.0 else 0.15 * length)
            if best is None or err < best[0]:
                best = (err, edge, frac * dur)
    return None if best is None else (best[1], best[2])


def snap_plan(alignment: Alignment, grid: BeatGrid, *, source_sha256: str = "") -> tuple[EditPlan, list[float]]:
    """Beat-level plan of an alignment and each plan segment's confidence.

    Segments that snap to zero beats are dropped. Raises ``EditorError`` when nothing
    is left (no segment spans a beat).
    """
    units = _units(grid)
    segs: list[Segment] = []
    confs: list[float] = []
    master = alignment.master_gain_db
    for s, fx in zip(alignment.segments, alignment.effects):
        a = _nearest_bound(grid, s.raw_start)
        b = _nearest_bound(grid, s.raw_end)
        if b <= a:
            continue
        if fx.reversed:
            ops = Ops(reversed=True)
        elif abs(fx.time_factor - 1.0) > 0.25:
            ops = Ops(time_factor=2.0 if fx.time_factor > 1 else 0.5)
        else:
            dead = GAIN_DEADBAND_COMPRESSED_DB if alignment.compressed else GAIN_DEADBAND_DB
            g = _quantise(s.gain_db - master, act.GAIN_DB, dead)
            lo = _quantise(fx.eq_low_db, act.EQ_DB, EQ_DEADBAND_DB)
            hi = _quantise(fx.eq_high_db, act.EQ_DB, EQ_DEADBAND_DB)
            if g != 0.0:
                ops = Ops(gain_db=g)
            elif lo != 0.0 and abs(fx.eq_low_db) >= abs(fx.eq_high_db):
                ops = Ops(eq_low_db=lo)
            elif hi != 0.0:
                ops = Ops(eq_high_db=hi)
            else:
                ops = Ops()
        pieces: list[Segment] = []
        head, tail = a, b
        if ops == Ops() or ops.gain_db != 0.0:
            fin = _fade_chunk(grid, units, a, b, s.fade_in_s, True) if s.fade_in_s > 0 else None
            if fin is not None:
                pieces.append(Segment(a, fin[0], Ops(fade_in_s=fin[1])))
                head = fin[0]
            fout = _fade_chunk(grid, units, head, b, s.fade_out_s, False) if s.fade_out_s > 0 and head < b else None
            if fout is not None:
                tail = fout[0]
            if tail > head:
                pieces.append(Segment(head, tail, ops))
            if fout is not None:
                pieces.append(Segment(fout[0], b, Ops(fade_out_s=fout[1])))
        else:
            pieces.append(Segment(a, b, ops))
        segs.extend(pieces)
        confs.extend([s.confidence] * len(pieces))
    if not segs:
        raise EditorError("no aligned segment spans a whole beat of the raw; nothing to label")
    return EditPlan(segments=tuple(segs), grid=grid, source_sha256=source_sha256), confs


def plan_actions(plan: EditPlan) -> tuple[list[tuple[int, int, int]], EditPlan, bool, list[str]]:
    """Oracle actions of a plan (envs.plan.oracle).

    Returns (actions, the plan they execute to, exact, notes): when the plan is not
    exactly expressible (e.g. a reversed span that is not one chunk, the jump budget)
    the oracle's closest actions are used and their own plan replaces the aligned one,
    so that labels and plan always agree. The round trip
    ``execute(grid, actions) == plan.merged()`` is checked here and raises on failure.
    """
    from envs.plan import execute, oracle

    res = oracle(plan)
    actions = [tuple(int(v) for v in x) for x in res.actions]
    back = execute(plan.grid, actions, source_sha256=plan.source_sha256)
    target = plan.merged() if res.exact else res.plan.merged()
    if back != target:
        raise EditorError("oracle actions do not execute back to the beat plan (envs.plan.oracle bug)")
    return actions, target, bool(res.exact), list(res.notes)  # type: ignore[return-value]


def plan_fidelity(*, raw: Audio, edited: Audio, plan: EditPlan) -> dict:
    """How close the rendered plan sounds to the real edited file.

    The render (envs.render) is aligned to the edited file frame by frame (the plan's
    joins sit on beats, so its timeline drifts from the edited one by up to a beat per
    join); on matched loud frames the log-mel spectra are compared after removing the
    median level difference. Returns {"logmel_db": mean absolute difference (dB, lower
    is better), "matched": share of the render's loud frames that found the edited file}.
    """
    from alignment.dp import viterbi_path
    from alignment.features import frame_features
    from envs.render import render

    out = render(y=raw.y, sr=raw.sr, plan=plan)
    y = resample(to_mono(out.y), sr_in=out.sr, sr_out=ANALYSIS_SR)
    fr = frame_features(y=y)
    fe = frame_features(y=edited.y_mono, base=fr.base)
    path, _ = viterbi_path(fr.feat, fe.feat, tau=0.7, switch_pen=4.0, enter_pen=2.0, leave_pen=2.0, e_silent=fr.silent)
    loud = ~fr.silent
    ok = loud & (path >= 0)
    if not ok.any():
        return {"logmel_db": float("inf"), "matched": 0.0}
    i = np.nonzero(ok)[0]
    d = fr.logmel[i] - fe.logmel[path[i]]
    d = d - np.median(d)
    return {"logmel_db": float(np.abs(d).mean()), "matched": float(ok.sum() / max(loud.sum(), 1))}


def _transfer_confidence(old: EditPlan, confs: list[float], new: EditPlan) -> list[float]:
    """Confidence of each segment of ``new``: that of the old segment covering its start."""
    out = []
    for s in new.segments:
        c = [cf for o, cf in zip(old.segments, confs) if o.raw_start <= s.raw_start < o.raw_end]
        out.append(max(c) if c else float(np.mean(confs)))
    return out


@dataclass(frozen=True)
class PairLabels:
    """Everything the aligner says about one pair (``to_dict`` is the JSON record)."""

    alignment: Alignment
    plan: EditPlan
    plan_confidence: tuple[float, ...]
    actions: tuple[tuple[int, int, int], ...] | None
    exact: bool | None
    notes: tuple[str, ...]
    fidelity: dict
    raw: Audio
    edited: Audio
    seconds: float
    grid_fit: PhaseFit | None = None

    def raw_beat_confidence(self) -> np.ndarray:
        """[shape=(n_beats,)] confidence of each raw beat's label: the segment's for a
        used beat, the pair's for a dropped one."""
        used = np.zeros(self.plan.grid.n_beats, dtype=np.float64)
        hit = np.zeros(self.plan.grid.n_beats, dtype=bool)
        for s, conf in zip(self.plan.segments, self.plan_confidence):
            used[s.raw_start : s.raw_end] = np.maximum(used[s.raw_start : s.raw_end], conf)
            hit[s.raw_start : s.raw_end] = True
        return np.where(hit, used, self.alignment.confidence)

    def to_dict(self) -> dict:
        d = self.alignment.to_dict()
        d.update(
            {
                "format_version": LABEL_FORMAT_VERSION,
                "fidelity": self.fidelity.get("logmel_db", d["fidelity"]),
                "fidelity_metric": "logmel_l1_db (render(raw, plan) vs edited; lower is better)",
                "fidelity_matched": self.fidelity.get("matched"),
                "fidelity_segments_db": d["fidelity"],
                "plan": self.plan.to_dict(),
                "plan_confidence": list(self.plan_confidence),
                "raw_beat_confidence": self.raw_beat_confidence().round(4).tolist(),
                "actions": None if self.actions is None else [list(a) for a in self.actions],
                "actions_exact": self.exact,
                "actions_notes": list(self.notes),
                "keep_ratio": self.plan.keep_ratio,
                "raw_path": self.raw.path,
                "edited_path": self.edited.path,
                "raw_sha256": self.raw.sha256,
                "edited_sha256": self.edited.sha256,
                "seconds": self.seconds,
                "editor_grid": None if self.grid_fit is None else self.grid_fit.to_dict(),
            }
        )
        return d


def label_pair(
    raw_path: str | Path,
    edited_path: str | Path,
    *,
    grid: BeatGrid | None = None,
    config: AlignConfig = AlignConfig(),
    with_actions: bool = True,
    with_fidelity: bool = True,
    editor_grid: bool = True,
) -> PairLabels:
    """Align a pair and derive its beat plan, actions and fidelity.

    grid : the raw's grid (default ``raw_grid(raw)``)
    editor_grid : relabel on the phase of that grid the edit's cut points agree with
        (alignment/grid.py); the plan's grid then carries the editor's bars and phrases
    Raises ``AudioError`` for unreadable/silent files or an edited file shorter than
    one bar of the raw; ``EditorError`` when nothing aligns.
    """
    t0 = time.perf_counter()
    raw = load_audio(raw_path)
    edited = load_audio(edited_path)
    if grid is None:
        grid = raw_grid(raw)
    bar_s = grid.beat_period * grid.beats_per_bar
    if edited.duration < bar_s:
        raise AudioError(
            f"{edited.path}: edited file is shorter than one bar of the raw ({edited.duration:.2f} s < {bar_s:.2f} s)"
        )
    al = align(raw=raw, edited=edited, config=config, min_edit_s=bar_s)
    if not al.segments:
        raise EditorError(
            f"{edited.path}: no part of it matches {raw.path} (confidence {al.confidence:.2f}); is it an edit of that recording?"
        )
    plan, confs = snap_plan(al, grid, source_sha256=raw.sha256)
    # The editor's own bar and phrase lines (alignment/grid.py): relabel on the phase
    # their cut points agree with, so a phrase-level edit becomes phrase-level actions.
    grid_fit = fit_phase(grid, cut_points(plan.segments, grid.n_beats))
    if editor_grid and grid_fit.phase != GridPhase():
        grid = grid_fit.phase.apply(grid)
        plan, confs = snap_plan(al, grid, source_sha256=raw.sha256)
    plan.validate()
    actions = exact = None
    notes: list[str] = []
    if with_actions:
        actions, plan_exec, exact, notes = plan_actions(plan)
        if not exact:
            log.info("%s: beat plan approximated by the vocabulary: %s", edited.path, "; ".join(notes[:3]))
            plan, confs = plan_exec, _transfer_confidence(plan, confs, plan_exec)
    fid = plan_fidelity(raw=raw, edited=edited, plan=plan) if with_fidelity else {}
    return PairLabels(
        alignment=al,
        plan=plan,
        plan_confidence=tuple(confs),
        actions=None if actions is None else tuple(actions),
        exact=exact,
        notes=tuple(notes),
        fidelity=fid,
        raw=raw,
        edited=edited,
        seconds=time.perf_counter() - t0,
        grid_fit=grid_fit if editor_grid else None,
    )
