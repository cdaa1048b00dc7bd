"""Scripted editors ("personas") with a known, consistent, content-driven style.

A persona looks at a song the way the pipeline does, through the 121 per-beat features on
the beat grid ``datasets.features.extract_features`` computes (the grid the alignment
and the environment use, so its plan is expressible in their vocabulary), and decides
an ``EditPlan`` from them. It never sees the true beats or the true section labels.

What a persona sees (``SongView``): the song cut into *units*, phrases of 4 bars aligned
to the strongest section boundaries (the structure-novelty peaks), each with its mean
loudness (dB), per-bar chroma and timbre; a unit-by-unit similarity; and a labelling of
units into section types (units that sound alike share a label).

Personas (keep ratio = fraction of the raw duration that is played at least once):

=========  =================================================================  ===========
persona    style                                                              keep ratio
=========  =================================================================  ===========
tight      cuts the quietest and most repetitive phrases until 42-52 % is    0.48 - 0.64
           cut (then 2-bar halves or bars to get there), fades out over ~2
           bars
extended   cuts the quiet intro, plays the loudest phrase twice (the repeat   0.75 - 1.00
           +1.5 dB), no fade
radio      drops the second verse and the bridge (by section labels), then    0.45 - 0.75
           the outro and intro while more than 65 % remains, fades out over
           ~4 bars
=========  =================================================================  ===========

Cuts fall on unit (phrase) boundaries, or on bar lines for tight's 2-bar / 1-bar trims.
Fades are one chunk of the action vocabulary faded over a fraction of its length (the
nearest to ~2 or ~4 bars that the grid's bar numbering allows), so every persona plan
replays exactly through ``envs.oracle.oracle_actions`` / ``envs.executor.execute`` (tested).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from datasets.structure import phrase_units, unit_similarity
from envs.plan import EditPlan, Ops, Segment

__all__ = ["SongView", "Persona", "PERSONAS", "analyse", "plan_edit", "persona_names"]

log = logging.getLogger(__name__)

#: Units are phrases of this many bars (DESIGN.md: PHRASE = 4 bars).
UNIT_BARS = 4
#: Two units belong to the same section type when their similarity exceeds this
#: (cosine of z-scored per-bar chroma + timbre; repeated sections score ~0.9+,
#: different sections of one song ~0.3-0.7 on the demo songs).
SAME_SECTION_SIM = 0.8
#: ... and their loudness differs by less than this (a chorus and a verse over the same
#: chords still differ in level).
SAME_SECTION_DB = 2.5


@dataclass(frozen=True, eq=False)
class SongView:
    """A song as a persona sees it.

    units : np.ndarray [shape=(n_units + 1,), int] unit boundaries in beats (0 .. n_beats)
    energy_db : np.ndarray [shape=(n_units,)] duration-weighted mean rms_db
    similarity : np.ndarray [shape=(n_units, n_units)] in [-1, 1]
    label : np.ndarray [shape=(n_units,), int] section type per unit (0 = first seen)
    seconds : np.ndarray [shape=(n_units,)] duration of each unit
    """

    grid: BeatGrid
    units: np.ndarray
    energy_db: np.ndarray
    similarity: np.ndarray
    label: np.ndarray
    seconds: np.ndarray

    @property
    def n_units(self) -> int:
        return len(self.units) - 1

    @property
    def total_s(self) -> float:
        return float(self.seconds.sum())

    def bars_in(self, i: int) -> int:
        b = self.grid.bar[self.units[i] : self.units[i + 1]]
        return int(len(np.unique(b)))

    def runs(self) -> list[tuple[int, int, int]]:
        """Consecutive units with the same label: (label, first unit, end unit)."""
        out: list[tuple[int, int, int]] = []
        for i, lab in enumerate(self.label):
            if out and out[-1][0] == lab:
                out[-1] = (lab, out[-1][1], i + 1)
            else:
                out.append((int(lab), i, i + 1))
        return out


def analyse(features) -> SongView:
    """Cut the song into phrase units and describe them (see the module docstring).

    features : ``datasets.features.BeatFeatures`` (its grid is the one the plan uses)
    """
    grid: BeatGrid = features.grid
    widths = np.diff(grid.bounds)
    rms_db = features.column("rms_db").astype(np.float64)
    # 1. Phrase units aligned to the section changes (datasets.structure: the same units
    #    the environment describes to the policy).
    units = phrase_units(features.values, grid)[0]
    m = len(units) - 1

    # 2. Per-unit loudness.
    seconds = np.array([widths[units[i] : units[i + 1]].sum() for i in range(m)])
    energy = np.array(
        [np.average(rms_db[units[i] : units[i + 1]], weights=widths[units[i] : units[i + 1]]) for i in range(m)]
    )

    # 3. Similarity: cosine of the bar-by-bar chroma + timbre sequences (datasets.structure,
    #    the same measure the environment's song context uses).
    sim = unit_similarity(features.values, grid, units)

    # 4. Section types: greedy clustering in song order (a unit joins the first type
    #    whose first unit it resembles in sound and level).
    label = np.full(m, -1, dtype=np.int64)
    reps: list[int] = []
    for i in range(m):
        for t, r in enumerate(reps):
            if sim[i, r] >= SAME_SECTION_SIM and abs(energy[i] - energy[r]) <= SAME_SECTION_DB:
                label[i] = t
                break
        else:
            label[i] = len(reps)
            reps.append(i)
    return SongView(grid=grid, units=units, energy_db=energy, similarity=sim, label=label, seconds=seconds)


# ------------------------------------------------------------------------------ plans
def _segments(view: SongView, keep: np.ndarray) -> list[Segment]:
    """Kept units (bool per unit) -> raw-order segments, contiguous units merged."""
    segs: list[Segment] = []
    for i in np.flatnonzero(keep):
        a, b = int(view.units[i]), int(view.units[i + 1])
        if segs and segs[-1].raw_end == a:
            segs[-1] = Segment(segs[-1].raw_start, b)
        else:
            segs.append(Segment(a, b))
    return segs


def _fade_out(view: SongView, segs: list[Segment], bars: int) -> list[Segment]:
    """Fade out over (about) the last ``bars`` bars, in a form the actions can replay.

    The action vocabulary fades one chunk (a bar, 2 bars, a phrase or 2 phrases of the
    grid's bar numbering) over a fraction of its length (``envs.actions.FADE_FRACTION``).
    The fade chunk must end where the edit ends; when the edit ends on a bar that no
    2-bar/phrase chunk ends on, the edit may run on by one bar into the (unplayed) music
    that follows, as an editor lets a fade ring into the next section. Of all (run-on,
    chunk, fraction) the one whose fade is nearest to ``bars`` bars (the run-on bar
    costs half a bar) wins. The chunk becomes the last segment, so
    ``oracle_actions`` reproduces the plan exactly; the split before it is
    raw-contiguous, so it renders as one continuous take.
    """
    from envs.actions import FADE_FRACTION, SIZE_UNIT_BARS

    last = segs[-1]
    g = view.grid
    b = g.bounds
    used = np.zeros(g.n_beats, dtype=bool)
    for sg in segs:
        used[sg.raw_start : sg.raw_end] = True
    bar_s = g.beat_period * g.beats_per_bar
    want = bars * bar_s
    # Candidate ends: the edit's end, then each following bar line while unplayed.
    ends = [last.raw_end]
    e = last.raw_end
    while len(ends) < min(bars, 2) and e < g.n_beats:
        nxt = e + 1
        while nxt < g.n_beats and g.bar[nxt] == g.bar[e]:
            nxt += 1
        if used[e:nxt].any():
            break
        ends.append(nxt)
        e = nxt
    best: tuple[float, int, int, float] | None = None  # (cost, end, start, fade)
    for run_on, end in enumerate(ends):
        for unit_bars in sorted({v for v in SIZE_UNIT_BARS.values() if v}):
            ids = g.unit_ids(unit_bars)  # the executor's units (pickup and end slivers joined)
            start = end - 1
            while start > 0 and ids[start - 1] == ids[end - 1]:
                start -= 1
            # the chunk ends where the edit ends and lies inside the last segment
            if start < last.raw_start or (end < g.n_beats and ids[end] == ids[end - 1]):
                continue
            dur = float(b[end]) - float(b[start])
            for frac in sorted(FADE_FRACTION.values()):
                fade = frac * dur  # the executor's arithmetic, so the plans compare equal
                cost = abs(fade - want) + 0.5 * bar_s * run_on
                if best is None or cost < best[0] - 1e-9:
                    best = (cost, end, start, fade)
    if best is None:  # no chunk fits (cannot happen on bar-aligned edits)
        return segs[:-1] + [Segment(last.raw_start, last.raw_end, Ops(fade_out_s=min(want, float(b[last.raw_end] - b[last.raw_start]))))]
    _, end, start, fade = best
    head = [Segment(last.raw_start, start, last.ops)] if start > last.raw_start else []
    return segs[:-1] + head + [Segment(start, end, Ops(fade_out_s=fade))]


def _kept_fraction(view: SongView, keep: np.ndarray) -> float:
    return float(view.seconds[keep].sum() / view.total_s)


def _tight(view: SongView) -> list[Segment]:
    """Cut ~45 %: quietest / most repetitive phrases first, then 2-bar halves, then bars.

    A cut is taken only while the total stays <= 52 %; cutting stops once >= 42 % is cut.
    """
    lo, hi = 0.42, 0.52
    m = view.n_units
    g = view.grid
    off = view.similarity - np.eye(m) * 2.0
    redundancy = off.max(axis=1) if m > 1 else np.zeros(m)
    # Cuttable = quiet and repeated elsewhere. Energy dominates: a quiet intro goes first.
    e = view.energy_db
    score = -(e - e.mean()) / (e.std() + 1e-9) + 0.7 * (redundancy - redundancy.mean()) / (redundancy.std() + 1e-9)
    order = np.argsort(-score, kind="stable")
    widths = np.diff(g.bounds)
    cut_beats = np.zeros(g.n_beats, dtype=bool)

    def cut_frac(mask: np.ndarray) -> float:
        return float(widths[mask].sum() / widths.sum())

    # Candidate spans, coarse to fine: whole units, then the second half (2 bars) of each
    # unit, then its last bar; within a size, the most cuttable unit first.
    spans: list[tuple[int, int]] = []
    for bars in (None, UNIT_BARS // 2, 1):
        for i in order:
            a, b = int(view.units[i]), int(view.units[i + 1])
            if bars is None:
                spans.append((a, b))
                continue
            ub = np.unique(g.bar[a:b])
            if len(ub) <= bars:
                continue
            start = a + int(np.flatnonzero(g.bar[a:b] == ub[len(ub) - bars])[0])
            spans.append((start, b))
    for a, b in spans:
        if cut_frac(cut_beats) >= lo:
            break
        trial = cut_beats.copy()
        trial[a:b] = True
        if cut_frac(trial) <= hi and not trial.all():
            cut_beats = trial
    segs: list[Segment] = []
    for i in np.flatnonzero(~cut_beats):
        if segs and segs[-1].raw_end == i:
            segs[-1] = Segment(segs[-1].raw_start, int(i) + 1)
        else:
            segs.append(Segment(int(i), int(i) + 1))
    return _fade_out(view, segs, bars=2)


def _extended(view: SongView) -> list[Segment]:
    """Drop the quiet intro, play the loudest phrase twice (the repeat lifted 1.5 dB)."""
    m = view.n_units
    e = view.energy_db
    keep = np.ones(m, dtype=bool)
    # The intro: leading units more than 3 dB below the song's median loudness (at least
    # the first unit), never more than a quarter of the song.
    quiet = e < np.median(e) - 3.0
    i = 0
    while i < m - 1 and (i == 0 or quiet[i]) and _kept_fraction(view, keep) - view.seconds[i] / view.total_s >= 0.75:
        keep[i] = False
        i += 1
    # The loudest full phrase among the kept ones.
    full = np.array([view.bars_in(k) >= UNIT_BARS for k in range(m)])
    cand = np.flatnonzero(keep & full) if (keep & full).any() else np.flatnonzero(keep)
    peak = int(cand[np.argmax(e[cand])])
    segs: list[Segment] = []
    for k in np.flatnonzero(keep):
        a, b = int(view.units[k]), int(view.units[k + 1])
        if segs and segs[-1].raw_end == a and segs[-1].ops == Ops():
            segs[-1] = Segment(segs[-1].raw_start, b)
        else:
            segs.append(Segment(a, b))
        if k == peak:
            segs.append(Segment(a, b, Ops(gain_db=1.5)))
    return segs


def _radio(view: SongView) -> list[Segment]:
    """Drop the 2nd verse and the bridge, then outro/intro while > 65 % remains; fade 4 bars."""
    m = view.n_units
    e = view.energy_db
    keep = np.ones(m, dtype=bool)
    runs = view.runs()
    count = np.bincount(view.label)
    n_runs = np.bincount([r[0] for r in runs], minlength=len(count))
    # Chorus: the loudest section type that comes back (fallback: the loudest unit's type).
    repeated = [t for t in range(len(count)) if n_runs[t] >= 2]
    type_db = np.array([e[view.label == t].mean() for t in range(len(count))])
    chorus = max(repeated, key=lambda t: type_db[t]) if repeated else int(view.label[np.argmax(e)])
    chorus_runs = [r for r in runs if r[0] == chorus]
    first_chorus = chorus_runs[0][1]
    last_chorus_end = chorus_runs[-1][2]
    drops: list[tuple[str, int, int]] = []
    # Verse: the repeated type sung before the first chorus; its second run comes after it.
    verse_types = [r[0] for r in runs if r[2] <= first_chorus and r[0] != chorus and n_runs[r[0]] >= 2 and r[1] > 0]
    if verse_types:
        verse = verse_types[-1]
        later = [r for r in runs if r[0] == verse and r[1] >= first_chorus and r[2] <= last_chorus_end]
        if later:
            drops.append(("verse2", later[0][1], later[0][2]))
    # Bridge: a section heard once, between the first and the last chorus.
    for lab, a, b in runs:
        if n_runs[lab] == 1 and a > first_chorus and b <= chorus_runs[-1][1] and lab != chorus:
            drops.append(("bridge", a, b))
    # Then the outro, then the intro, while the edit is still long.
    optional = []
    if last_chorus_end < m:
        optional.append(("outro", last_chorus_end, m))
    intro_end = next((r[1] for r in runs if r[1] > 0 and r[0] != runs[0][0]), 1)
    if intro_end < first_chorus or first_chorus > 0:
        optional.append(("intro", 0, min(intro_end, first_chorus) if first_chorus > 0 else intro_end))
    dropped = []
    for what, a, b in drops + optional:
        if what in ("outro", "intro") and _kept_fraction(view, keep) <= 0.65:
            continue
        trial = keep.copy()
        trial[a:b] = False
        if trial.any() and _kept_fraction(view, trial) >= 0.45:
            keep = trial
            dropped.append(what)
    # Still long (sections not told apart): drop the quietest remaining units.
    for i in np.argsort(e, kind="stable"):
        if _kept_fraction(view, keep) <= 0.72:
            break
        trial = keep.copy()
        trial[i] = False
        if trial.any() and _kept_fraction(view, trial) >= 0.5:
            keep = trial
            dropped.append(f"unit{i}")
    log.debug("radio: dropped %s", dropped)
    return _fade_out(view, _segments(view, keep), bars=4)


@dataclass(frozen=True)
class Persona:
    """A scripted editor: ``decide(view)`` returns the plan's segments."""

    name: str
    description: str
    keep_range: tuple[float, float]  # documented and tested
    decide: Callable[[SongView], list[Segment]]


PERSONAS: dict[str, Persona] = {
    "tight": Persona(
        "tight", "cuts the quietest/most repetitive phrases to ~45 % cut, 2-bar fade-out", (0.48, 0.64), _tight
    ),
    "extended": Persona(
        "extended", "cuts the quiet intro, loops the loudest phrase once (+1.5 dB)", (0.75, 1.0), _extended
    ),
    "radio": Persona(
        "radio", "drops the second verse and the bridge (then outro/intro), 4-bar fade-out", (0.45, 0.75), _radio
    ),
}


def persona_names() -> tuple[str, ...]:
    return tuple(PERSONAS)


def plan_edit(features, persona: str, *, source_sha256: str = "") -> EditPlan:
    """The persona's ``EditPlan`` for a song.

    features : ``datasets.features.BeatFeatures`` of the raw song (its grid is the plan's)
    persona : one of ``PERSONAS``
    """
    if persona not in PERSONAS:
        raise ParameterError(f"unknown persona {persona!r} (choose from {', '.join(PERSONAS)})")
    view = analyse(features)
    segs = PERSONAS[persona].decide(view)
    return EditPlan(segments=tuple(segs), grid=features.grid, source_sha256=source_sha256 or features.sha256).validate()
