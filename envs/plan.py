"""The EditPlan: the one contract between alignment, the environment and the renderer.

An EditPlan is an ordered list of segments of the raw recording, each a span of whole
raw beats ``[raw_start, raw_end)`` with per-segment treatments (``Ops``). The plan
carries the ``BeatGrid`` it is expressed in and the hash of the raw audio, so that it
can be rendered, exported or re-loaded from JSON without guessing (DESIGN.md, "One
contract").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from datasets.beats import BeatGrid
from datasets.errors import ParameterError

__all__ = ["Ops", "Segment", "EditPlan", "PLAN_FORMAT_VERSION", "merge_segments"]

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Ops:
    """Treatments applied to one segment, in this order: time/reverse, EQ, effects,
    gain, fades.

    gain_db : level change in dB
    fade_in_s, fade_out_s : fade lengths in seconds at the segment's start / end
        (0 = none); equal-power join crossfades are separate and always present
    eq_low_db, eq_high_db : low-shelf (below ~200 Hz) / high-shelf (above ~4 kHz) gain
    distortion : drive in dB (0 = off)
    reverb : wet level in [0, 1] (0 = off)
    time_factor : playback speed, pitch preserved; 2.0 = double time (half as long),
        0.5 = half time (twice as long)
    reversed : play the segment backwards
    """

    gain_db: float = 0.0
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0
    eq_low_db: float = 0.0
    eq_high_db: float = 0.0
    distortion: float = 0.0
    reverb: float = 0.0
    time_factor: float = 1.0
    reversed: bool = False

    @property
    def is_identity(self) -> bool:
        return self == Ops()

    @property
    def has_effect(self) -> bool:
        """True when anything other than gain and fades changes the sound."""
        return (
            self.eq_low_db != 0.0
            or self.eq_high_db != 0.0
            or self.distortion != 0.0
            or self.reverb != 0.0
            or self.time_factor != 1.0
            or self.reversed
        )


@dataclass(frozen=True)
class Segment:
    """Raw beats [raw_start, raw_end) played with ``ops``."""

    raw_start: int
    raw_end: int
    ops: Ops = field(default_factory=Ops)

    @property
    def n_beats(self) -> int:
        return self.raw_end - self.raw_start


@dataclass(frozen=True, eq=False)
class EditPlan:
    """Ordered segments of raw beats, the grid they index, and the raw audio's hash."""

    segments: tuple[Segment, ...]
    grid: BeatGrid
    source_sha256: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EditPlan):
            return NotImplemented
        return (
            self.segments == other.segments
            and self.source_sha256 == other.source_sha256
            and np.array_equal(self.grid.bounds, other.grid.bounds)
        )

    __hash__ = None  # type: ignore[assignment]

    # -- derived quantities -------------------------------------------------------
    def segment_seconds(self, seg: Segment) -> tuple[float, float]:
        """Raw span of a segment in seconds."""
        return float(self.grid.bounds[seg.raw_start]), float(self.grid.bounds[seg.raw_end])

    @property
    def raw_beats_used(self) -> np.ndarray:
        """How many times each raw beat is played [shape=(n_beats,), int]."""
        used = np.zeros(self.grid.n_beats, dtype=np.int64)
        for s in self.segments:
            used[s.raw_start : s.raw_end] += 1
        return used

    @property
    def keep_ratio(self) -> float:
        """Fraction of the raw duration that appears at least once in the output."""
        kept = self.raw_beats_used > 0
        widths = np.diff(self.grid.bounds)
        return float(widths[kept].sum() / widths.sum())

    def merged(self) -> "EditPlan":
        """Same plan with contiguous segments that share ops joined into one.

        Two plans that sound the same then compare equal (KEEP 4 + KEEP 4 == KEEP 8).
        Reversed runs stay apart (``merge_segments``): this is the executor's canonical
        plan, and the oracle must be able to rebuild it.
        """
        return replace(self, segments=tuple(merge_segments(self.segments)))

    # -- validation ---------------------------------------------------------------
    def validate(self, *, source_sha256: str | None = None) -> "EditPlan":
        """Raise ``ParameterError`` naming the first problem; return self when valid."""
        if not self.segments:
            raise ParameterError("plan has no segments (an edit must keep something)")
        n = self.grid.n_beats
        for i, s in enumerate(self.segments):
            if not (0 <= s.raw_start < s.raw_end <= n):
                raise ParameterError(f"segment {i}: raw beats [{s.raw_start}, {s.raw_end}) outside [0, {n})")
            o = s.ops
            if not (-60.0 <= o.gain_db <= 24.0):
                raise ParameterError(f"segment {i}: gain_db {o.gain_db} outside [-60, 24]")
            if o.fade_in_s < 0 or o.fade_out_s < 0:
                raise ParameterError(f"segment {i}: negative fade length")
            if not (0.25 <= o.time_factor <= 4.0):
                raise ParameterError(f"segment {i}: time_factor {o.time_factor} outside [0.25, 4]")
            if not (0.0 <= o.reverb <= 1.0):
                raise ParameterError(f"segment {i}: reverb {o.reverb} outside [0, 1]")
            if not (0.0 <= o.distortion <= 60.0):
                raise ParameterError(f"segment {i}: distortion {o.distortion} dB outside [0, 60]")
            if abs(o.eq_low_db) > 24 or abs(o.eq_high_db) > 24:
                raise ParameterError(f"segment {i}: EQ gain beyond +-24 dB")
        if source_sha256 is not None and self.source_sha256 and source_sha256 != self.source_sha256:
            raise ParameterError(
                f"plan was made for audio {self.source_sha256[:12]}, not this file ({source_sha256[:12]})"
            )
        return self

    # -- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict with beats *and* seconds for every segment."""
        segs = []
        for s in self.segments:
            t0, t1 = self.segment_seconds(s)
            segs.append(
                {"raw_start_beat": s.raw_start, "raw_end_beat": s.raw_end, "raw_start_s": t0, "raw_end_s": t1, "ops": asdict(s.ops)}
            )
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "source_sha256": self.source_sha256,
            "keep_ratio": self.keep_ratio,
            "segments": segs,
            "grid": self.grid.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "EditPlan":
        if d.get("format_version") != PLAN_FORMAT_VERSION:
            raise ParameterError(f"plan format_version {d.get('format_version')!r}, expected {PLAN_FORMAT_VERSION}")
        grid = BeatGrid.from_dict(d["grid"])
        known = {f.name for f in fields(Ops)}
        segs = []
        for i, s in enumerate(d["segments"]):
            unknown = set(s.get("ops", {})) - known
            if unknown:
                raise ParameterError(f"segment {i}: unknown ops {sorted(unknown)}")
            segs.append(Segment(int(s["raw_start_beat"]), int(s["raw_end_beat"]), Ops(**s.get("ops", {}))))
        return cls(segments=tuple(segs), grid=grid, source_sha256=d.get("source_sha256", "")).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "EditPlan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParameterError(f"plan is not valid JSON ({exc})") from None
        return cls.from_dict(d)


def merge_segments(segments, *, reversed_runs: bool = False) -> list[Segment]:
    """Join segments that continue each other in the raw with the same ops (no fade
    between them): the one merge rule of the plan (``EditPlan.merged``) and the renderer.

    reversed_runs : also join reversed segments that play the raw just *before* the
        previous one ([4,8) reversed then [0,4) reversed plays 76543210, which is [0,8)
        reversed). The renderer does (it merges what sounds the same); ``merged`` does
        not, on purpose: it is the canonical form of the executor's plans, and the
        oracle rebuilds a reversed span only as one REVERSE chunk, which [0,8) need not
        be (JUMP_BACK + REVERSE BEAT can make [4,8)r + [3,4)r, never [3,8)r in one go).
        Forward-contiguous reversed segments never merge: [0,4) then [4,8) reversed
        plays 3210 7654, not 76543210.
    """
    out: list[Segment] = []
    for s in segments:
        if out:
            p = out[-1]
            same = p.ops == s.ops and p.ops.fade_out_s == 0 and s.ops.fade_in_s == 0
            if same and not s.ops.reversed and p.raw_end == s.raw_start:
                out[-1] = Segment(p.raw_start, s.raw_end, p.ops)
                continue
            if same and reversed_runs and s.ops.reversed and s.raw_end == p.raw_start:
                out[-1] = Segment(s.raw_start, p.raw_end, p.ops)
                continue
        out.append(s)
    return out
