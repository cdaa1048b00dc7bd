"""The aligner: which spans of a raw recording an edited file plays, in which order,
at which level and with which fades.

Steps of ``align_signals`` (both signals mono at 22050 Hz):
1. frame features (alignment.features): log-mel with EQ, gain and fade removed,
   one frame per 23.2 ms;
2. the best path of raw frames for the edited frames by Viterbi over *every* raw
   position (alignment.dp): cuts, loops, reorders and jumps back anywhere in the song
   are all one kind of switch, and material that matches nothing is "unmatched";
3. runs of constant offset (raw frame - edited frame) become segments; runs that
   differ by a frame or two are joined (a join a few ms off, codec jitter); slivers of
   unmatched between segments (a crossfade) are split between the neighbours;
4. each segment's offset is refined to the sample by waveform cross-correlation, each
   join to the sample by the least residual of "left segment" vs "right segment";
5. gain per segment = median frame-power ratio, fades = a fit of the power ratio at
   the segment's ends to the renderer's fade curve (alignment.levels);
6. unmatched stretches longer than a second are tried again against the raw played
   backwards, at double and at half speed (REVERSE / DOUBLE_TIME / HALF_TIME), and
   every segment's low/high shelf change is estimated (EQ_LOW / EQ_HIGH);
7. confidence = matched share of the edited file x mean frame agreement of the
   segments, where each segment's time counts by how long it continues the raw
   (1 - exp(-length / evidence_s)): unrelated music of one style shares fragments
   (a drum loop, a held chord) but not seconds-long runs, so an unrelated pair gets
   ~0-0.46 and a real edit >= 0.77 (alignment.labels.MIN_CONFIDENCE).

All times in the result are seconds; the beat grid only enters in alignment.labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from alignment import levels
from alignment.dp import viterbi_path
from alignment.features import HOP, SR, FrameFeatures, frame_features
from alignment.result import AlignedSegment, Alignment, SegmentEffects, master_gain, unmatched_spans
from datasets.audio import Audio
from datasets.errors import AudioError

__all__ = ["AlignConfig", "align", "align_signals"]

log = logging.getLogger(__name__)

FRAME_S = HOP / SR


@dataclass(frozen=True)
class AlignConfig:
    """Aligner settings; the defaults were tuned on real music (bench/alignment.py)."""

    #: Frame similarity that scores as much as "unmatched". Matching frames of the same
    #: music through MP3 + mastering score 0.85-0.98, unrelated music rarely > 0.7.
    tau: float = 0.7
    #: Cost of a jump to another raw position, in units of (sim - tau) per frame: a
    #: new segment must beat the old one by 0.1 over ~2 s to be worth it, so a repeated
    #: bar elsewhere in the song does not steal a continuing segment.
    switch_pen: float = 4.0
    #: Costs of entering the raw from unmatched and of leaving it.
    enter_pen: float = 2.0
    leave_pen: float = 2.0
    #: Segments shorter than this are dropped (a beat at 200 BPM is 0.3 s).
    min_segment_s: float = 0.25
    #: A segment must agree with its raw span at least this much on average.
    min_segment_sim: float = 0.8
    #: Offsets within this many frames are one segment (drift, jitter, a join a few
    #: ms off the grid) and get one refined offset.
    merge_frames: int = 2
    #: Neighbouring segments are one when one offset explains both within this much
    #: mean similarity (repeated passages; codec noise is ~0.01-0.02).
    unify_tol: float = 0.03
    #: Unmatched gaps up to this long between segments are a crossfade, not material.
    max_gap_s: float = 0.2
    #: Look for reversed / double / half-time material in unmatched stretches this long.
    effects_min_s: float = 1.0
    #: Segments agreeing less than this are re-tried as reversed / stretched material
    #: (a reversed passage can follow the forward raw at ~0.8 for a while).
    weak_sim: float = 0.88
    detect_effects: bool = True
    #: Seconds over which a segment's match becomes evidence of an edit (confidence,
    #: step 7): a segment of length L counts 1 - exp(-L / evidence_s) of its time.
    #: Measured (alignment.labels.MIN_CONFIDENCE): 249 segments of 213 unrelated pairs
    #: (different songs of one style, same composer or same generator) are all < 3.5 s
    #: (median 0.84 s); segments of 87 real edits: 5th percentile 3.0 s, median 9.4 s.
    #: 1.5 s keeps a 4-s segment at 0.93 and a 1-s fragment at 0.49.
    evidence_s: float = 1.5
    #: Re-align with the edited file's static EQ removed when it exceeds this (dB in
    #: some mel band); a mastering shelf of +-2 dB lowers matching frames' similarity.
    eq_redo_db: float = 1.0
    #: Split contiguous segments where the level steps by >= 1 dB (GAIN on a span
    #: that continues the raw).
    gain_steps: bool = True
    #: A level step is undone when one gain + fades fits both sides within this many
    #: dB (mean absolute residual) of the worse side's own fit.
    step_merge_db: float = 0.3
    refine: bool = True


# ---------------------------------------------------------------------------------
# public entry points


def align(*, raw: Audio, edited: Audio, config: AlignConfig = AlignConfig(), min_edit_s: float = 0.5) -> Alignment:
    """Align two decoded recordings (any rates/channels: their 22050 Hz mono copies).

    min_edit_s : shortest edited file accepted (labels.py passes one bar of the raw)
    Raises ``AudioError`` for a silent raw/edited file or an edited file shorter than
    ``min_edit_s``.
    """
    if raw.is_silent:
        raise AudioError(f"{raw.path}: the raw recording is silent, nothing to align")
    if edited.is_silent:
        raise AudioError(f"{edited.path}: the edited file is silent, nothing to align")
    dur = len(edited.y_mono) / SR
    if dur < min_edit_s:
        raise AudioError(f"{edited.path}: edited file too short to align ({dur:.2f} s, need at least {min_edit_s:.2f} s)")
    return align_signals(y_raw=raw.y_mono, y_edit=edited.y_mono, sr=SR, config=config)


def align_signals(*, y_raw: np.ndarray, y_edit: np.ndarray, sr: int = SR, config: AlignConfig = AlignConfig()) -> Alignment:
    """Align mono signals at 22050 Hz.

    y_raw : np.ndarray [shape=(n_raw,)]
    y_edit : np.ndarray [shape=(n_edit,)]
    """
    import time

    t_start = time.perf_counter()
    if sr != SR:
        raise AudioError(f"align_signals needs {SR} Hz mono audio, got {sr} Hz")
    y_raw = np.asarray(y_raw, dtype=np.float32)
    y_edit = np.asarray(y_edit, dtype=np.float32)
    if len(y_edit) < HOP * 4 or len(y_raw) < HOP * 4:
        raise AudioError(f"signals too short to align ({len(y_raw) / SR:.2f} s raw, {len(y_edit) / SR:.2f} s edited)")
    R = frame_features(y=y_raw)
    E = frame_features(y=y_edit, base=R.base)
    path, sim = viterbi_path(
        E.feat, R.feat, tau=config.tau, switch_pen=config.switch_pen, enter_pen=config.enter_pen,
        leave_pen=config.leave_pen, e_silent=E.silent,
    )
    # A mastering EQ is a static per-band dB offset between the files: measure it on
    # the matched frames and align once more with it removed.
    ok = (path >= 0) & ~E.silent
    if ok.sum() > 50:
        i = np.nonzero(ok)[0]
        shape = np.median(E.logmel[i] - R.logmel[path[i]], axis=0)
        shape = shape - np.median(shape)
        if np.abs(shape).max() > config.eq_redo_db:
            E = frame_features(y=y_edit, base=R.base + shape)
            path, sim = viterbi_path(
                E.feat, R.feat, tau=config.tau, switch_pen=config.switch_pen, enter_pen=config.enter_pen,
                leave_pen=config.leave_pen, e_silent=E.silent,
            )
    runs = _runs(path, sim, E, config)
    runs = _unify(runs, E, R, config)
    segs = [_Run(a, b, off, 1.0, False, s) for a, b, off, s in runs]
    if config.detect_effects:
        segs = _effect_pass(segs, E, R, config)
    segs.sort(key=lambda r: r.a)
    segs = _fill_gaps(segs, E.n_frames, config, E.silent)
    edit_dur = len(y_edit) / SR
    raw_dur = len(y_raw) / SR
    # frame runs -> seconds, offsets refined to the sample
    out: list[list[float]] = []  # [edit_start, edit_end, offset_s or raw anchor, ...]
    for r in segs:
        e0, e1 = r.a * FRAME_S, r.b * FRAME_S
        if r.factor == 1.0 and not r.reversed:
            off = r.off * FRAME_S
            if config.refine:
                off = _refine_offset(y_edit, y_raw, e0, e1, off)
            out.append([e0, e1, off])
        elif r.reversed and config.refine:
            # in the reversed raw (time u = D - r) the segment is a forward copy
            D = len(y_raw) / SR
            off_u = D - r.off * FRAME_S - e0
            off_u = _refine_offset(y_edit, y_raw[::-1], e0, e1, off_u)
            out.append([e0, e1, (D - e0 - off_u) / FRAME_S])
        else:
            out.append([e0, e1, r.off])
    # edges: the first segment starts where the edit starts when it is close
    if config.refine:
        for k in range(len(out) - 1):
            if segs[k].factor == 1.0 and segs[k + 1].factor == 1.0 and not segs[k].reversed and not segs[k + 1].reversed:
                if abs(out[k][1] - out[k + 1][0]) < 1e-6:
                    t = _refine_join(y_edit, y_raw, out[k][1], out[k][2], out[k + 1][2])
                    out[k][1] = out[k + 1][0] = t
    curve = _compressor_curve(segs, out, y_edit, y_raw)
    if config.gain_steps:
        segs, out = _split_gain_steps(segs, out, y_edit, y_raw, curve)
    if out:
        if out[0][0] < 3 * FRAME_S:
            out[0][0] = 0.0
        if out[-1][1] > edit_dur - 3 * FRAME_S:
            out[-1][1] = edit_dur
    segments: list[AlignedSegment] = []
    effects: list[SegmentEffects] = []
    owner: list[_Run] = []  # the frame run each segment came from
    last_cost: list[float] = []  # each segment's level-fit residual (dB)
    for r, (e0, e1, off) in zip(segs, out):
        anchor = off * FRAME_S  # effect segments: raw start (forward) or end (reversed), s
        if r.factor == 1.0 and not r.reversed:
            r0, r1 = e0 + off, e1 + off
            # the raw cannot start before 0 or end after its end: trim the edit span
            if r0 < 0:
                e0, r0 = e0 - r0, 0.0
            if r1 > raw_dur:
                e1, r1 = e1 - (r1 - raw_dur), raw_dur
        else:
            # off holds the raw anchor: start (forward) or the end (reversed), seconds
            span = (e1 - e0) * r.factor
            if r.reversed:
                r1 = min(raw_dur, max(span, anchor))
                r0 = max(0.0, r1 - span)
            else:
                r0 = max(0.0, anchor)
                r1 = min(raw_dur, r0 + span)
        if e1 - e0 < config.min_segment_s:
            continue
        lv = levels.measure(y_edit=y_edit, y_raw=y_raw, edit_span=(e0, e1), raw_span=(r0, r1), reversed=r.reversed, curve=curve)
        conf = float(np.clip((r.sim - 0.5) / 0.45, 0.0, 1.0))
        if segments and owner and owner[-1] is r and abs(segments[-1].edit_end - e0) < 1e-9:
            # A level step inside one raw run is kept only when it is a real gain edit:
            # not when it measures < 1 dB (compressor motion), and not when one gain
            # with fades explains both sides about as well (a compressed fade-out
            # looks flat, then drops).
            p = segments[-1]
            both = levels.measure(
                y_edit=y_edit, y_raw=y_raw, edit_span=(p.edit_start, e1), raw_span=(p.raw_start, r1), reversed=r.reversed, curve=curve
            )
            if abs(lv.gain_db - p.gain_db) < levels.MIN_STEP_DB or both.fit_cost <= max(lv.fit_cost, last_cost[-1]) + config.step_merge_db:
                segments.pop()
                effects.pop()
                last_cost.pop()
                e0, r0, lv = p.edit_start, p.raw_start, both
            else:
                owner.append(r)
        else:
            owner.append(r)
        last_cost.append(lv.fit_cost)
        segments.append(AlignedSegment(e0, e1, r0, r1, lv.gain_db, lv.fade_in_s, lv.fade_out_s, conf))
        effects.append(SegmentEffects(time_factor=r.factor, reversed=r.reversed, eq_low_db=lv.eq_low_db, eq_high_db=lv.eq_high_db))
    master = master_gain(segments)
    effects = _remove_master_eq(segments, effects)
    unmatched = unmatched_spans(segments, edit_dur)
    alignment_conf = 0.0
    if segments:
        w = np.array([s.edit_end - s.edit_start for s in segments])
        c = np.array([s.confidence for s in segments])
        loud_share = 1.0 - float(E.silent.mean())
        evidence = 1.0 - np.exp(-w / config.evidence_s)  # short fragments are weak evidence
        matched = min(1.0, float((w * evidence).sum()) / max(edit_dur * max(loud_share, 1e-3), 1e-9))
        alignment_conf = float(np.clip(matched, 0, 1) * (w * c).sum() / w.sum())
    fidelity = levels.reconstruction_distance(y_edit=y_edit, y_raw=y_raw, segments=segments, effects=effects, edit_features=E) if segments else float("inf")
    return Alignment(
        segments=tuple(segments),
        effects=tuple(effects),
        confidence=alignment_conf,
        fidelity=fidelity,
        unmatched=tuple(unmatched),
        master_gain_db=master,
        edit_duration=edit_dur,
        raw_duration=raw_dur,
        seconds=time.perf_counter() - t_start,
        compressed=curve is not None,
    )


# ---------------------------------------------------------------------------------
# frame-level segmentation


@dataclass
class _Run:
    a: int  # first edited frame
    b: int  # one past the last edited frame
    off: float  # raw frame - edited frame (forward, factor 1); else raw anchor frame
    factor: float
    reversed: bool
    sim: float


def _runs(path: np.ndarray, sim: np.ndarray, E: FrameFeatures, cfg: AlignConfig) -> list[tuple[int, int, float, float]]:
    """Runs of constant offset along the Viterbi path: (a, b, offset frames, mean sim)."""
    n = len(path)
    idx = np.arange(n)
    off = np.where(path >= 0, path - idx, np.iinfo(np.int64).min)
    cuts = np.r_[0, np.nonzero(np.diff(off))[0] + 1, n]
    raw_runs = [(int(a), int(b), int(off[a])) for a, b in zip(cuts[:-1], cuts[1:]) if path[a] >= 0]
    # join runs whose offsets differ by <= merge_frames and that touch (or nearly)
    merged: list[list[int]] = []
    for a, b, o in raw_runs:
        if merged and a - merged[-1][1] <= 2 and abs(o - merged[-1][2]) <= cfg.merge_frames:
            pa, pb, po = merged[-1]
            # keep the offset of the longer part
            merged[-1] = [pa, b, po if (pb - pa) >= (b - a) else o]
        else:
            merged.append([a, b, o])
    loud = ~E.silent
    out = []
    min_frames = cfg.min_segment_s / FRAME_S
    for a, b, o in merged:
        m = loud[a:b]
        s = float(np.nanmean(sim[a:b][m])) if m.any() else 0.0
        if b - a < min_frames or s < cfg.min_segment_sim:
            continue
        out.append((a, b, float(o), s))
    return out


def _offset_sim(E: FrameFeatures, R: FrameFeatures, a: int, b: int, off: int) -> float:
    """Mean similarity of loud edited frames [a, b) against raw frames at ``off``
    (-inf when the raw does not cover them)."""
    if a + off < 0 or b + off > R.n_frames:
        return -np.inf
    m = ~E.silent[a:b]
    if not m.any():
        return -np.inf
    d = np.einsum("ij,ij->i", E.feat[a:b][m], R.feat[a + off : b + off][m])
    return float(d.mean())


def _unify(runs: list[tuple[int, int, float, float]], E: FrameFeatures, R: FrameFeatures, cfg: AlignConfig) -> list[tuple[int, int, float, float]]:
    """Join neighbouring runs when one offset explains both about as well.

    Repetitive music offers near-identical copies of a passage; the Viterbi path
    can hop to a copy that scores a hair better through codec noise. When the
    neighbour's offset explains a run within ``unify_tol`` of its own similarity, the
    two are one segment (fewer joins, the simpler edit).
    """
    runs = [list(r) for r in runs]
    changed = True
    while changed and len(runs) > 1:
        changed = False
        best = None
        for k in range(len(runs) - 1):
            A, B = runs[k], runs[k + 1]
            if B[0] - A[1] > 2:
                continue
            # A under B's offset, or B under A's offset; prefer the smaller loss
            for who, (a, b), off, own in ((0, (A[0], A[1]), int(B[2]), A[3]), (1, (B[0], B[1]), int(A[2]), B[3])):
                s = _offset_sim(E, R, a, b, off)
                loss = own - s
                if loss <= cfg.unify_tol and (best is None or loss < best[0]):
                    best = (loss, k, off)
        if best is not None:
            _, k, off = best
            A, B = runs[k], runs[k + 1]
            s = _offset_sim(E, R, A[0], B[1], off)
            runs[k : k + 2] = [[A[0], B[1], float(off), s]]
            changed = True
    return [tuple(r) for r in runs]  # type: ignore[misc]


def _fill_gaps(segs: list[_Run], n: int, cfg: AlignConfig, silent: np.ndarray) -> list[_Run]:
    """Split short unmatched gaps between segments (a crossfade) between them; give
    silent gaps to the segment before (the tail of a fade-out) or, at the start of the
    file, to the first segment (the start of a fade-in)."""
    max_gap = int(round(cfg.max_gap_s / FRAME_S))
    for k in range(len(segs) - 1):
        gap = segs[k + 1].a - segs[k].b
        if gap > 0 and silent[segs[k].b : segs[k + 1].a].all():
            segs[k].b = segs[k + 1].a
        elif 0 < gap <= max_gap:
            mid = segs[k].b + gap // 2
            segs[k].b = mid
            segs[k + 1].a = mid
    if segs and segs[-1].b < n and silent[segs[-1].b :].all():
        segs[-1].b = n
    if segs and segs[0].a > 0 and silent[: segs[0].a].all() and segs[0].factor == 1.0 and not segs[0].reversed:
        segs[0].a = 0
    return segs


def _compressor_curve(segs: list[_Run], out: list[list[float]], y_edit: np.ndarray, y_raw: np.ndarray):
    """The edited file's level-dependent ratio (a mastering compressor), or None."""
    fwd = [(e0, e1, off) for r, (e0, e1, off) in zip(segs, out) if r.factor == 1.0 and not r.reversed]
    frames = [levels.ratio_frames(y_edit=y_edit, y_raw=y_raw, edit_span=(e0, e1), offset_s=off) for e0, e1, off in fwd]
    if not frames:
        return None
    return levels.level_curve(np.concatenate([f[1] for f in frames]), np.concatenate([f[2] for f in frames]))


def _split_gain_steps(segs: list[_Run], out: list[list[float]], y_edit: np.ndarray, y_raw: np.ndarray, curve):
    """Split forward segments where their level steps (a gain change on a span that
    continues the raw is invisible to the gain-invariant features)."""
    segs2: list[_Run] = []
    out2: list[list[float]] = []
    for r, (e0, e1, off) in zip(segs, out):
        if r.factor != 1.0 or r.reversed:
            segs2.append(r)
            out2.append([e0, e1, off])
            continue
        cuts = levels.gain_steps(y_edit=y_edit, y_raw=y_raw, edit_span=(e0, e1), offset_s=off, curve=curve)
        bounds = [e0, *cuts, e1]
        for a, b in zip(bounds[:-1], bounds[1:]):
            segs2.append(r)
            out2.append([a, b, off])
    return segs2, out2


def _remove_master_eq(segments: list[AlignedSegment], effects: list[SegmentEffects]) -> list[SegmentEffects]:
    """EQ relative to the file-wide tilt (a mastering EQ is not an edit)."""
    if not effects:
        return effects
    w = np.array([s.edit_end - s.edit_start for s in segments])
    lo = np.array([e.eq_low_db for e in effects])
    hi = np.array([e.eq_high_db for e in effects])

    def wmed(x: np.ndarray) -> float:
        o = np.argsort(x)
        cw = np.cumsum(w[o])
        return float(x[o][np.searchsorted(cw, cw[-1] / 2)])

    mlo, mhi = wmed(lo), wmed(hi)
    return [
        SegmentEffects(e.time_factor, e.reversed, round(e.eq_low_db - mlo, 2), round(e.eq_high_db - mhi, 2)) for e in effects
    ]


# ---------------------------------------------------------------------------------
# reversed / stretched material


def _effect_pass(segs: list[_Run], E: FrameFeatures, R: FrameFeatures, cfg: AlignConfig) -> list[_Run]:
    """Try unmatched stretches against the raw reversed, at double and at half speed.

    Features of a frame are magnitude spectra, which reversal leaves alone, and
    stretching (pitch kept) changes how many frames a passage lasts, not their
    spectra: so the raw's frame sequence reversed / decimated / repeated is what the
    edited file shows for such a segment.
    """
    n = E.n_frames
    covered = np.zeros(n, dtype=bool)
    for r in segs:
        if r.sim >= cfg.weak_sim:
            covered[r.a : r.b] = True
    min_frames = int(cfg.effects_min_s / FRAME_S)
    gaps = []
    i = 0
    while i < n:
        if not covered[i]:
            j = i
            while j < n and not covered[j]:
                j += 1
            if j - i >= min_frames and (~E.silent[i:j]).mean() > 0.5:
                gaps.append((i, j))
            i = j
        else:
            i += 1
    if not gaps:
        return segs
    n_r = R.n_frames
    # one state space holding every variant: switches between them cost a jump
    variants = [
        # (factor, reversed, raw frame index of each variant frame)
        (1.0, False, np.arange(n_r)),
        (1.0, True, np.arange(n_r - 1, -1, -1)),
        (2.0, False, np.arange(0, n_r, 2)),
        (0.5, False, np.repeat(np.arange(n_r), 2)),
    ]
    idx_all = np.concatenate([v[2] for v in variants])
    starts = np.cumsum([0] + [len(v[2]) for v in variants])
    found = list(segs)
    for a, b in gaps:
        path, sim = viterbi_path(
            E.feat[a:b], R.feat[idx_all], tau=cfg.tau, switch_pen=cfg.switch_pen, enter_pen=cfg.enter_pen,
            leave_pen=cfg.leave_pen, e_silent=E.silent[a:b],
        )
        # a run must not straddle two variants: mark the variant in the offset
        var = np.searchsorted(starts, np.maximum(path, 0), side="right") - 1
        path_v = np.where(path >= 0, path + var * (10 * (b - a) + 10), -1)
        sub = FrameFeatures(E.feat[a:b], E.logmel[a:b], E.energy_db[a:b], E.silent[a:b], E.base)
        runs = _runs(np.where(path >= 0, path_v, -1), sim, sub, cfg)
        new = []
        for ra, rb, o, s in runs:
            v0 = int(path[ra])
            k = int(var[ra])
            factor, rev, _ = variants[k]
            anchor = float(idx_all[v0]) + (1.0 if rev else 0.0)
            if factor == 1.0 and not rev:
                new.append(_Run(a + ra, a + rb, float(idx_all[v0] - (a + ra)), 1.0, False, s))
            else:
                new.append(_Run(a + ra, a + rb, anchor, factor, rev, s))
        found = [r for r in found if not (r.a >= a and r.b <= b)] + new
    return found


# ---------------------------------------------------------------------------------
# sample-accurate refinement


def _refine_offset(y_edit: np.ndarray, y_raw: np.ndarray, e0: float, e1: float, off: float) -> float:
    """Offset (raw - edit, s) refined by waveform cross-correlation in the segment's middle.

    Searches +-1.5 frames around the frame-level offset; keeps the frame-level value
    when the correlation peak is weak (heavy processing destroys the waveform).
    """
    from datasets.dsp import fftconvolve_valid  # scipy.signal's, without its import cost

    span = e1 - e0
    if span < 0.2:
        return off
    mid = 0.5 * (e0 + e1)
    half = min(2.0, span / 2 - 0.05)
    if half < 0.05:
        return off
    a = int((mid - half) * SR)
    b = int((mid + half) * SR)
    seg = y_edit[a:b]
    search = int(1.5 * HOP)
    r0 = int(round((mid - half + off) * SR)) - search
    r1 = r0 + len(seg) + 2 * search
    if r0 < 0 or r1 > len(y_raw) or len(seg) < 256:
        return off
    ref = y_raw[r0:r1]
    corr = fftconvolve_valid(ref, seg[::-1])  # [2*search + 1]
    e_seg = float(np.dot(seg, seg))
    c2 = np.cumsum(np.r_[0.0, ref.astype(np.float64) ** 2])
    e_ref = c2[len(seg) :] - c2[: -len(seg)]
    ncc = corr / np.sqrt(e_seg * e_ref + 1e-12)
    k = int(np.argmax(ncc))
    if ncc[k] < 0.3:
        return off
    return (r0 + k) / SR - (mid - half)


def _refine_join(y_edit: np.ndarray, y_raw: np.ndarray, t: float, off_a: float, off_b: float, win_s: float = 0.12) -> float:
    """Join time between two segments: where "left plays A, right plays B" fits best.

    cost(t) = residual of the edited signal against raw-at-offset-A before t plus
    against raw-at-offset-B after t (each with its least-squares gain), over +-win_s.
    """
    a = int((t - win_s) * SR)
    b = int((t + win_s) * SR)
    if a < 0 or b > len(y_edit):
        return t
    ra = a + int(round(off_a * SR))
    rb = a + int(round(off_b * SR))
    n = b - a
    if ra < 0 or rb < 0 or ra + n > len(y_raw) or rb + n > len(y_raw):
        return t
    e = y_edit[a:b].astype(np.float64)
    xa = y_raw[ra : ra + n].astype(np.float64)
    xb = y_raw[rb : rb + n].astype(np.float64)
    # gains fitted on the outer halves, where each segment surely plays
    h = n // 2
    ga = np.dot(e[:h], xa[:h]) / (np.dot(xa[:h], xa[:h]) + 1e-12)
    gb = np.dot(e[h:], xb[h:]) / (np.dot(xb[h:], xb[h:]) + 1e-12)
    da = (e - ga * xa) ** 2
    db = (e - gb * xb) ** 2
    # cost of splitting before sample k: sum(da[:k]) + sum(db[k:])
    cost = np.r_[0.0, np.cumsum(da)] + (db.sum() - np.r_[0.0, np.cumsum(db)])
    k = int(np.argmin(cost))
    # only trust a clear minimum (waveforms coherent); else keep the frame estimate
    if cost[k] > 0.8 * min(cost[0], cost[-1]):
        return t
    return (a + k) / SR
