"""What the aligner finds: the spans of the raw an edited file plays, with their levels,
fades and effects (``Alignment``), in seconds. Produced by alignment.align (audio pairs)
and alignment.projects (DAW projects); read by alignment.labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SEGMENT_KEYS", "AlignedSegment", "SegmentEffects", "Alignment", "unmatched_spans", "master_gain"]


@dataclass(frozen=True)
class AlignedSegment:
    """One span of the raw played in the edited file (all seconds).

    edit_start, edit_end : where it plays in the edited file
    raw_start, raw_end : the raw span (raw_end - raw_start differs from the edit span
        only for time-stretched segments)
    gain_db : level of the edited span relative to the raw, fades excluded
    fade_in_s, fade_out_s : fade lengths at the segment's ends (0 = none)
    confidence : [0, 1] frame agreement of the edited span with the raw span
    """

    edit_start: float
    edit_end: float
    raw_start: float
    raw_end: float
    gain_db: float
    fade_in_s: float
    fade_out_s: float
    confidence: float

    def to_dict(self) -> dict:
        return {k: float(getattr(self, k)) for k in SEGMENT_KEYS}


SEGMENT_KEYS = ("edit_start", "edit_end", "raw_start", "raw_end", "gain_db", "fade_in_s", "fade_out_s", "confidence")


@dataclass(frozen=True)
class SegmentEffects:
    """What else was done to a segment (detected, not always measured exactly).

    time_factor : raw seconds per edited second (2.0 = double time)
    reversed : the raw span plays backwards
    eq_low_db, eq_high_db : low (< 200 Hz) / high (> 4 kHz) band level relative to the
        segment's overall gain, after the file-wide mastering tilt is removed
    """

    time_factor: float = 1.0
    reversed: bool = False
    eq_low_db: float = 0.0
    eq_high_db: float = 0.0


@dataclass(frozen=True)
class Alignment:
    """Result of aligning an edited file to its raw recording.

    segments : in edited-time order, non-overlapping
    effects : one ``SegmentEffects`` per segment
    confidence : [0, 1] matched share (each segment weighted by its length's evidence,
        ``AlignConfig.evidence_s``) x mean segment confidence
    fidelity : log-mel distance (dB, mean absolute over loud frames; lower is better,
        0 = identical) between the edited file and the raw re-assembled from the
        segments with their gains and fades
    unmatched : edited-time intervals (s) that match no raw material
    master_gain_db : duration-weighted median of the segment gains (a mastering level)
    edit_duration, raw_duration : seconds
    """

    segments: tuple[AlignedSegment, ...]
    effects: tuple[SegmentEffects, ...]
    confidence: float
    fidelity: float
    unmatched: tuple[tuple[float, float], ...]
    master_gain_db: float
    edit_duration: float
    raw_duration: float
    seconds: float = field(default=0.0, compare=False)
    #: a mastering compressor was detected (and undone approximately): segment gains
    #: then carry about +-1 dB of noise from its attack/release
    compressed: bool = False

    @property
    def matched_fraction(self) -> float:
        if self.edit_duration <= 0:
            return 0.0
        return float(sum(s.edit_end - s.edit_start for s in self.segments) / self.edit_duration)

    def raw_time_at(self, t: np.ndarray) -> np.ndarray:
        """Raw time played at edited times ``t`` (nan where unmatched) [shape=t.shape]."""
        t = np.asarray(t, dtype=np.float64)
        out = np.full(t.shape, np.nan)
        for s, fx in zip(self.segments, self.effects):
            m = (t >= s.edit_start) & (t < s.edit_end)
            frac = (t[m] - s.edit_start) / max(s.edit_end - s.edit_start, 1e-9)
            if fx.reversed:
                out[m] = s.raw_end - frac * (s.raw_end - s.raw_start)
            else:
                out[m] = s.raw_start + frac * (s.raw_end - s.raw_start)
        return out

    def to_dict(self) -> dict:
        return {
            "segments": [s.to_dict() for s in self.segments],
            "segment_effects": [
                {"time_factor": e.time_factor, "reversed": e.reversed, "eq_low_db": e.eq_low_db, "eq_high_db": e.eq_high_db}
                for e in self.effects
            ],
            "confidence": float(self.confidence),
            "fidelity": float(self.fidelity),
            "fidelity_metric": "logmel_l1_db",
            "unmatched": [[float(a), float(b)] for a, b in self.unmatched],
            "master_gain_db": float(self.master_gain_db),
            "matched_fraction": self.matched_fraction,
            "edit_duration": float(self.edit_duration),
            "raw_duration": float(self.raw_duration),
            "compressed": bool(self.compressed),
        }


def unmatched_spans(segments: Sequence[AlignedSegment], dur: float, min_s: float = 0.05) -> list[tuple[float, float]]:
    """Edited-time gaps (s) longer than ``min_s`` that no segment plays."""
    out = []
    t = 0.0
    for s in segments:
        if s.edit_start - t > min_s:
            out.append((t, s.edit_start))
        t = max(t, s.edit_end)
    if dur - t > min_s:
        out.append((t, dur))
    return out


def master_gain(segments: Sequence[AlignedSegment]) -> float:
    """Duration-weighted median of the segment gains (dB): the file's mastering level."""
    if not segments:
        return 0.0
    g = np.array([s.gain_db for s in segments])
    w = np.array([s.edit_end - s.edit_start for s in segments])
    order = np.argsort(g)
    cw = np.cumsum(w[order])
    return float(g[order][np.searchsorted(cw, cw[-1] / 2)])
