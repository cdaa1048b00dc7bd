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
   checked by the round trip ``execute(grid, actions) == plan.merged()``. When that is
   not exact, ``expressible_plan`` rewrites the plan into what the executor can play
   (a reversed span as REVERSE chunks played last-first, a span reaching the song's end
   that is not the last one stopped a beat short so JUMP_BACK can replay the song) and
   the labels that reproduce more of the edit win.
3. ``label_loss``: what the labels do not play of the edit (seconds, edited and raw
   spans, why), and the verdicts: a pair below ``MIN_CONFIDENCE`` is refused
   (``RefusedPair``); ``make align`` trains a pair only when its labels reproduce at
   least ``MIN_REPRODUCED`` of the aligned edit.
4. ``plan_fidelity``: the plan rendered by envs.render, aligned back to the real
   edited file, and their log-mel distance (dB) on the matched frames.

``label_pair`` runs everything for one raw/edited pair and returns the JSON record;
``labels_from_alignment`` is its steps 1-4 for any alignment (alignment/projects.py
gives it a DAW project's items, with confidence 1.0).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignment.align import AlignConfig, align
from alignment.grid import GridPhase, PhaseFit, cut_times, fit_tempo
from alignment.result import Alignment
from datasets.audio import ANALYSIS_SR, Audio, load_audio, resample, to_mono
from datasets.beats import BeatGrid
from datasets.errors import AudioError, EditorError
from envs import actions as act
from envs.plan import EditPlan, Ops, Segment

__all__ = [
    "LABEL_FORMAT_VERSION", "MIN_CONFIDENCE", "MIN_REPRODUCED", "RefusedPair", "raw_grid", "snap_plan", "plan_actions",
    "plan_fidelity", "expressible_plan", "label_loss", "LabelLoss", "label_pair", "PairLabels", "EditedProject",
    "labels_from_alignment",
]

log = logging.getLogger(__name__)

#: 2: plans and actions on the editor's phase of the grid (alignment/grid.py).
#: 3: "loss" (what the labels do not play of the edit, make align's verdict rule),
#: reversed spans as REVERSE chunks last-first, a repeat of the whole song via JUMP_BACK.
#: 4: a pickup or last piece shorter than a bar joins its neighbouring unit
#: (``BeatGrid.unit_ids``): no more KEEP BEAT for a 1-beat pickup.
LABEL_FORMAT_VERSION = 4
#: A gain change smaller than this is no change: two thirds of the smallest GAIN step
#: (1.5 dB), because a mastering compressor leaves +-1 dB of level noise per segment.
GAIN_DEADBAND_DB = 1.0
#: ... and when the edited file went through a compressor, whose attack/release moves
#: segment levels by up to ~1.2 dB that no static curve explains: only a full GAIN
#: step counts (a 1.5 dB edit under a 2:1 compressor measures < 1 dB anyway).
GAIN_DEADBAND_COMPRESSED_DB = 1.5
#: Shelf changes below half the smallest EQ step (3 dB) are no change.
EQ_DEADBAND_DB = 1.5
#: Pairs whose alignment confidence (alignment.align step 7) is below this are refused
#: as "not an edit of that recording". Measured with one aligner pass per pair:
#: 87 real edits: min 0.773, 5th percentile 0.857, median 0.999 (demo corpus 0.992-1.0;
#: persona edits of data/music + data/tracks clean and MP3/48 kHz 0.986-1.0; harsh
#: mastering + 128 kbit/s MP3 >= 0.950; simulate.py edits with gains, mastering, MP3,
#: 48 kHz >= 0.902; a third of the edit under reverb/distortion/EQ/reversal >= 0.833;
#: 15 % foreign material inserted, 48 kHz MP3 0.773-0.869).
#: 213 unrelated pairs: max 0.459, 95th percentile 0.056 (every pair of 45-s clips of
#: 14 supertux and of 13 warzone tracks of one composer/album: max 0.459; raw of a song vs
#: the edit of another, clean and MP3: <= 0.185; two procedural demo songs of one
#: generator: <= 0.220; two MIDI renders: 0.0). 0.6 leaves 0.14 above the highest
#: unrelated pair and 0.17 below the lowest real edit.
MIN_CONFIDENCE = 0.6
#: ``make align`` trains a pair only when its labels reproduce at least this share of
#: the aligned edit (``LabelLoss.reproduced``): labels that miss more than a tenth of
#: what the editor kept teach the policy cuts the editor did not make. Measured on the
#: 87 real edits above: 76 reproduce 1.0; 9 lose one beat (0.991-0.994: a last phrase
#: looped with a gain change, a reversed ending: a span reaching the song's end must be
#: the last one played); 2 lose a whole stretch (0.716, 0.768: six spans from a 15-17 s
#: song, past the executor's 1.5x output cap). The raw played twice: 0.99; three times:
#: 0.65. 0.9 is far from both kinds of loss.
MIN_REPRODUCED = 0.9


class RefusedPair(EditorError):
    """The edited file is not (recognisably) an edit of the raw recording."""

    def __init__(self, message: str, *, confidence: float) -> None:
        super().__init__(message)
        self.confidence = float(confidence)


def raw_grid(raw: Audio) -> BeatGrid:
    """The raw's beat grid, exactly as the feature pipeline computes (and caches) it."""
    from datasets.features import extract_features

    return extract_features(raw).grid


def _units(grid: BeatGrid) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) of the unit of each size containing each beat (as envs.plan)."""
    n = grid.n_beats
    out = []
    for s in act.Size:
        ids = grid.unit_ids(act.SIZE_UNIT_BARS[s])
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
    from envs.executor import execute
    from envs.oracle import oracle

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


# ---------------------------------------------------------------------------------
# what the vocabulary can say of a plan, and what the labels lose of the edit


def _chunk_pieces(grid: BeatGrid, a: int, b: int) -> list[tuple[int, int]]:
    """[a, b) cut, from the left, into the largest spans that are each one chunk from
    their own start (``[h, end of h's unit)``, as envs.plan sizes them): what one
    REVERSE action can play. A BEAT always fits, so the cover is complete."""
    units = _units(grid)
    out = []
    h = a
    while h < b:
        e = max(int(en[h]) for _, en in units if int(en[h]) <= b)
        out.append((h, e))
        h = e
    return out


def expressible_plan(plan: EditPlan) -> tuple[EditPlan, list[str]]:
    """The plan rewritten into what the executor can play; returns (plan, what it lost).

    - REVERSE plays one chunk backwards, so a longer reversed span [a, b) becomes its
      chunk pieces (``_chunk_pieces``), each reversed, the last piece first (the oracle
      goes back with JUMP_BACK between them): the same audio, joins at the piece edges.
    - The episode ends when the read head reaches the song's end, so a segment that
      reaches it (a forward span, or the first piece played of a reversed one) can only
      be the last appended. When more follows (the raw played twice), it stops one beat
      short of the end: the smallest loss that lets JUMP_BACK reach what follows.
    """
    n = plan.grid.n_beats
    out: list[Segment] = []
    changes: list[str] = []
    for i, s in enumerate(plan.segments):
        last = i == len(plan.segments) - 1
        a, b = s.raw_start, s.raw_end
        pieces = _chunk_pieces(plan.grid, a, b) if s.ops.reversed else [(a, b)]
        if b == n and (not last or len(pieces) > 1):
            b = n - 1
            changes.append(f"segment [{a}, {n}) stops at beat {b}: the episode ends when the read head reaches the song's end")
            if b <= a:
                continue
            pieces = _chunk_pieces(plan.grid, a, b) if s.ops.reversed else [(a, b)]
        out.extend(Segment(p, q, s.ops) for p, q in reversed(pieces))
    if not out:
        return plan, []
    return EditPlan(segments=tuple(out), grid=plan.grid, source_sha256=plan.source_sha256), changes


@dataclass(frozen=True)
class LabelLoss:
    """What of the edited file the labels do not play (all seconds).

    reproduced : [0, 1] share of the aligned edit (the edited seconds that match raw
        material) whose material (raw beats, their direction and speed) the label plan
        plays in the edit's order. Treatments (a gain rounded to the GAIN amounts) do
        not count as lost, and neither does material from elsewhere (``unmatched_s``,
        which the alignment's confidence judges)
    lost_s : edited seconds the alignment found but the labels do not play
    unmatched_s : edited seconds matching no raw material (no label can play them)
    extra_s : seconds the labels play that the edit does not
    spans : the lost stretches, (edit_start, edit_end, raw_start, raw_end, reversed)
    why : the reasons (the executor's limits, the oracle's notes)
    """

    reproduced: float
    lost_s: float
    unmatched_s: float
    extra_s: float
    spans: tuple[tuple[float, float, float, float, bool], ...]
    why: tuple[str, ...] = ()

    def trains(self, min_reproduced: float = MIN_REPRODUCED) -> bool:
        """``make align``'s rule: the pair trains when the labels reproduce enough."""
        return self.reproduced >= min_reproduced

    def line(self, min_reproduced: float | None = MIN_REPRODUCED) -> str:
        """One line: the share reproduced, the lost spans, why, and make align's verdict
        (left out when ``min_reproduced`` is None)."""
        parts = [f"labels reproduce {100 * self.reproduced:.1f} % of the aligned edit"]
        if self.lost_s > 0:
            shown = [
                f"edited {e0:.2f}-{e1:.2f} s (raw {r1:.2f}-{r0:.2f} s reversed)" if rev else f"edited {e0:.2f}-{e1:.2f} s (raw {r0:.2f}-{r1:.2f} s)"
                for e0, e1, r0, r1, rev in self.spans[:3]
            ]
            more = f" and {len(self.spans) - 3} more" if len(self.spans) > 3 else ""
            parts.append(f"lost {self.lost_s:.2f} s: " + ", ".join(shown) + more)
        if self.unmatched_s > 0.05:
            parts.append(f"{self.unmatched_s:.2f} s match no raw material")
        if self.extra_s > 0.05:
            parts.append(f"{self.extra_s:.2f} s played that the edit does not play")
        if self.why:
            parts.append("why: " + "; ".join(self.why[:2]) + (" ..." if len(self.why) > 2 else ""))
        if min_reproduced is not None:
            verdict = "trains on it" if self.trains(min_reproduced) else "skips it"
            parts.append(f"make align {verdict} (rule: >= {100 * min_reproduced:.0f} %)")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "reproduced": float(self.reproduced),
            "lost_s": float(self.lost_s),
            "unmatched_s": float(self.unmatched_s),
            "extra_s": float(self.extra_s),
            "spans": [
                {"edit_start": e0, "edit_end": e1, "raw_start": r0, "raw_end": r1, "reversed": rev}
                for e0, e1, r0, r1, rev in self.spans
            ],
            "why": list(self.why),
            "summary": self.line(None),
        }


def _speed(time_factor: float) -> float:
    """The speed class snap_plan gives a segment (2.0, 0.5 or 1.0)."""
    return (2.0 if time_factor > 1 else 0.5) if abs(time_factor - 1.0) > 0.25 else 1.0


def _lcs_pairs(a: list, b: list) -> list[tuple[int, int]]:
    """Index pairs of a longest common subsequence of ``a`` and ``b`` (Hunt-Szymanski:
    O((matches + n) log n); tokens repeat only as often as the edit repeats material).
    difflib's longest-block-first matching is not enough: for the raw played twice
    against labels [0, n-1) + [0, n) it matches one copy and calls the other lost."""
    from bisect import bisect_left

    where: dict = {}
    for j, x in enumerate(b):
        where.setdefault(x, []).append(j)
    thresh: list[int] = []  # thresh[k]: smallest b index ending a common subsequence of length k + 1
    links: list = []  # links[k]: (i, j, the link it extends) for thresh[k]
    for i, x in enumerate(a):
        for j in reversed(where.get(x, ())):
            k = bisect_left(thresh, j)
            node = (i, j, links[k - 1] if k else None)
            if k == len(thresh):
                thresh.append(j)
                links.append(node)
            elif j < thresh[k]:
                thresh[k] = j
                links[k] = node
    out = []
    node = links[-1] if links else None
    while node is not None:
        out.append((node[0], node[1]))
        node = node[2]
    return out[::-1]


def label_loss(alignment: Alignment, plan: EditPlan, *, why: list[str] | tuple[str, ...] = ()) -> LabelLoss:
    """Compare the edit (the alignment, on ``plan.grid``'s beats) with what ``plan`` plays.

    Both become sequences of (raw beat, reversed, speed) tokens: the edit's from each
    aligned segment, snapped to beats as ``snap_plan`` snaps it and spread evenly over
    its edited span; the plan's in play order. Their longest common subsequence (in
    order, so a repeat the labels drop is lost even though its beats are played once)
    gives the edited seconds reproduced; unmatched edit tokens are the lost spans.
    """
    import inspect

    from envs.executor import Executor

    grid = plan.grid
    bounds = grid.bounds
    keys_e: list[tuple[int, bool, float]] = []
    tok_e: list[tuple[float, float, int, bool]] = []  # edit_start, edit_end, beat, reversed
    dropped: list[tuple[float, float, float, float, bool]] = []
    for s, fx in zip(alignment.segments, alignment.effects):
        a, b = _nearest_bound(grid, s.raw_start), _nearest_bound(grid, s.raw_end)
        speed = 1.0 if fx.reversed else _speed(fx.time_factor)
        if b <= a:  # snaps to no beat: snap_plan drops it
            dropped.append((s.edit_start, s.edit_end, s.raw_start, s.raw_end, fx.reversed))
            continue
        beats = range(b - 1, a - 1, -1) if fx.reversed else range(a, b)
        edges = np.linspace(s.edit_start, s.edit_end, b - a + 1)
        for k, beat in enumerate(beats):
            keys_e.append((beat, fx.reversed, speed))
            tok_e.append((float(edges[k]), float(edges[k + 1]), beat, fx.reversed))
    keys_p: list[tuple[int, bool, float]] = []
    dur_p: list[float] = []
    for seg in plan.segments:
        beats = range(seg.raw_end - 1, seg.raw_start - 1, -1) if seg.ops.reversed else range(seg.raw_start, seg.raw_end)
        for beat in beats:
            keys_p.append((beat, seg.ops.reversed, seg.ops.time_factor))
            dur_p.append(float(bounds[beat + 1] - bounds[beat]) / seg.ops.time_factor)
    hit_e = np.zeros(len(keys_e), dtype=bool)
    hit_p = np.zeros(len(keys_p), dtype=bool)
    for i, j in _lcs_pairs(keys_e, keys_p):
        hit_e[i] = hit_p[j] = True
    spans: list[list] = []
    for hit, (e0, e1, beat, rev) in zip(hit_e, tok_e):
        if hit:
            continue
        r0, r1 = float(bounds[beat]), float(bounds[beat + 1])
        if spans and abs(spans[-1][1] - e0) < 1e-6 and spans[-1][4] == rev and abs((spans[-1][2] if rev else spans[-1][3]) - (r1 if rev else r0)) < 1e-6:
            spans[-1][1] = e1
            if rev:
                spans[-1][2] = r0
            else:
                spans[-1][3] = r1
        else:
            spans.append([e0, e1, r0, r1, rev])
    lost = [tuple(x) for x in spans] + dropped
    lost.sort(key=lambda x: x[0])
    lost_s = float(sum(x[1] - x[0] for x in lost))
    matched_s = float(sum(e1 - e0 for (e0, e1, _, _), h in zip(tok_e, hit_e) if h))
    aligned_s = float(sum(s.edit_end - s.edit_start for s in alignment.segments))
    reasons = list(why)
    cap = inspect.signature(Executor).parameters["max_output_ratio"].default
    # lost material that the edit plays after the cap's worth of output: the cap's doing
    if any(x[1] > cap * grid.duration + float(np.max(np.diff(bounds))) for x in lost):
        reasons.insert(0, f"the executor caps an edit at {cap:g}x the raw's length ({cap * grid.duration:.1f} s)")
    if dropped:
        reasons.append(f"{len(dropped)} aligned segment(s) shorter than a beat")
    return LabelLoss(
        reproduced=float(np.clip(matched_s / aligned_s, 0.0, 1.0)) if aligned_s > 0 else 0.0,
        lost_s=lost_s,
        unmatched_s=max(0.0, alignment.edit_duration - aligned_s),
        extra_s=float(sum(d for d, h in zip(dur_p, hit_p) if not h)),
        spans=tuple((float(a), float(b), float(c), float(d), bool(e)) for a, b, c, d, e in lost),
        why=tuple(reasons) if lost_s > 0 else (),
    )


def _express(plan: EditPlan, confs: list[float], al: Alignment):
    """Oracle actions for the plan and the loss of the labels they make; when the
    oracle is not exact, the plan rewritten by ``expressible_plan`` is tried too and
    the labels that reproduce more of the edit win (then fewer extra seconds).

    Returns (actions, plan they execute to, confidences, exact, notes, LabelLoss).
    """
    actions, got, exact, notes = plan_actions(plan)
    loss = label_loss(al, got, why=notes)
    if exact:  # the aligned plan itself (unmerged: one segment per aligned treatment)
        return actions, plan, confs, exact, notes, loss
    alt, changes = expressible_plan(plan)
    if alt.segments != plan.segments:
        actions2, got2, exact2, notes2 = plan_actions(alt)
        lossy = changes  # the chunk split of a reversed span loses nothing; trims do
        loss2 = label_loss(al, got2, why=lossy + notes2)
        tie = abs(loss2.reproduced - loss.reproduced) <= 1e-9
        if loss2.reproduced > loss.reproduced + 1e-9 or (tie and loss2.extra_s < loss.extra_s - 1e-9):
            return actions2, got2, _transfer_confidence(plan, confs, got2), exact2 and not lossy, lossy + notes2, loss2
    return actions, got, _transfer_confidence(plan, confs, got), exact, notes, loss


@dataclass(frozen=True)
class EditedProject:
    """The edited side of a pair when it is a DAW project, not audio (what the record
    names: the file and its hash). kind : "rpp" | "otio" | "plan"."""

    path: str
    sha256: str
    kind: str


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
    edited: Audio | EditedProject
    seconds: float
    grid_fit: PhaseFit | None = None
    #: what the labels do not play of the edit (``label_loss``)
    loss: LabelLoss | None = None
    #: what of a DAW project the labels leave out (muted items, plug-ins, ...)
    project_notes: tuple[str, ...] = ()

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
                "loss": None if self.loss is None else self.loss.to_dict(),
                # "audio" (aligned) or the project kind; a project's confidence is 1.0
                "edited_kind": self.edited.kind if isinstance(self.edited, EditedProject) else "audio",
                "project_notes": list(self.project_notes),
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
    min_confidence: float = MIN_CONFIDENCE,
) -> PairLabels:
    """Align a pair and derive its beat plan, actions and fidelity.

    grid : the raw's grid (default ``raw_grid(raw)``)
    editor_grid : relabel on the phase of that grid the edit's cut points agree with
        (alignment/grid.py); the plan's grid then carries the editor's bars and phrases
    min_confidence : below this alignment confidence the pair is refused
    Raises ``AudioError`` for unreadable/silent files or an edited file shorter than
    one bar of the raw; ``RefusedPair`` (an ``EditorError``) below ``min_confidence``;
    ``EditorError`` when nothing aligns.
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
    if al.confidence < min_confidence:
        raise RefusedPair(
            f"{edited.path}: refused as an edit of {raw.path}: alignment confidence {al.confidence:.2f} < {min_confidence:.2f}"
            " (different recordings measure <= 0.46, real edits >= 0.77; --min-confidence overrides)",
            confidence=al.confidence,
        )
    if not al.segments:
        raise EditorError(
            f"{edited.path}: no part of it matches {raw.path} (confidence {al.confidence:.2f}); is it an edit of that recording?"
        )
    return labels_from_alignment(
        al, raw=raw, edited=edited, grid=grid, with_actions=with_actions, with_fidelity=with_fidelity,
        editor_grid=editor_grid, t0=t0,
    )


def labels_from_alignment(
    al: Alignment,
    *,
    raw: Audio,
    edited: Audio | EditedProject,
    grid: BeatGrid,
    with_actions: bool = True,
    with_fidelity: bool = True,
    editor_grid: bool = True,
    t0: float | None = None,
    project_notes: tuple[str, ...] = (),
) -> PairLabels:
    """Steps 1-4 of the module for one alignment of ``raw`` (``label_pair`` after
    ``align``): the beat plan on the editor's grid, its actions, loss and fidelity.

    edited : the edited audio, or the DAW project the alignment was read from (then
        no fidelity is measured: there is no audio to compare with)
    """
    t0 = time.perf_counter() if t0 is None else t0
    with_fidelity = with_fidelity and isinstance(edited, Audio)
    plan, confs = snap_plan(al, grid, source_sha256=raw.sha256)
    # The editor's own bar and phrase lines (alignment/grid.py): relabel on the phase
    # their cut points agree with, so a phrase-level edit becomes phrase-level actions.
    grid_fit = fit_tempo(grid, cut_times(al.segments, raw.duration))
    if editor_grid and grid_fit.phase != GridPhase():
        grid = grid_fit.phase.apply(grid)
        plan, confs = snap_plan(al, grid, source_sha256=raw.sha256)
    plan.validate()
    actions = exact = None
    notes: list[str] = []
    if with_actions:
        actions, plan, confs, exact, notes, loss = _express(plan, confs, al)
        if not exact:
            log.info("%s: beat plan approximated by the vocabulary: %s", edited.path, "; ".join(notes[:3]))
    else:
        loss = label_loss(al, plan)
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
        loss=loss,
        project_notes=tuple(project_notes),
    )
