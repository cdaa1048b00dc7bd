"""The renderer: the only code that turns an EditPlan into samples (DESIGN.md, "One contract").

The layout (envs/layout.py) is computed from the plan alone, without touching audio, so
the environment can ask for the output duration and the join positions at no cost;
``render`` then fills that layout with sound.

Rules, in the order they are applied
------------------------------------
1-3. **Merging, sample-accurate cuts and the four kinds of join** are the layout's
   (envs/layout.py): ``render`` fills ``layout(plan, sr)`` with sound.
4. **Ops**, per segment: reverse, time stretch (pedalboard.time_stretch, pitch kept), EQ
   (low shelf at 200 Hz, high shelf at 4 kHz), distortion (pedalboard Distortion, output
   level matched to its input so drive changes colour, not loudness), reverb (pedalboard
   Reverb, dry kept at 1, ``wet_level = REVERB_WET_SCALE * ops.reverb``; the wet tail
   rings on for up to ``REVERB_TAIL_S`` after the segment, mixed over what follows, faded
   out, cut at the end of the output), gain in dB, then fades (equal-power quarter-sine curves over
   ``fade_in_s``/``fade_out_s`` of the segment, clipped to its length).
5. **Never clips.** Where the output goes above 1.0, a safety limiter brings it to -0.1
   dBFS with a smooth gain reduction over ``LIMITER_WINDOW_MS`` around each over, leaving
   everything else untouched; the largest reduction and the time touched are reported
   (``RenderResult.safety_gain_db``, ``.limited_s``). ``limit=False`` skips it.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from datasets.errors import EditorError, ParameterError
from envs.layout import DEFAULT_CROSSFADE_MS, Join, Layout, Piece, layout
from envs.plan import EditPlan, Ops

__all__ = [
    "REVERB_TAIL_S",
    "REVERB_WET_SCALE",
    "EQ_LOW_HZ",
    "EQ_HIGH_HZ",
    "SAFETY_CEILING",
    "LIMITER_WINDOW_MS",
    "RenderResult",
    "render",
    "render_excerpt",
    "main",
]

#: Reverb ringing kept after a segment: pedalboard's Reverb at room_size 0.5 has decayed
#: by ~60 dB after about 1.5 s.
REVERB_TAIL_S = 1.5
#: pedalboard's wet_level per unit of ``Ops.reverb``: its Freeverb wet output is 1.86x the
#: input's RMS at wet_level 1 (measured on freezingpoint.ogg), so 0.5 makes reverb=1 a
#: wet signal about as loud as the (untouched) dry one.
REVERB_WET_SCALE = 0.5
#: Shelf corners: 200 Hz separates kick/bass from the rest, 4 kHz is where hi-hats and
#: "air" live (the spec's EQ_LOW / EQ_HIGH).
EQ_LOW_HZ = 200.0
EQ_HIGH_HZ = 4000.0
#: Output peak after the safety limiter: -0.1 dBFS leaves room for inter-sample peaks
#: after conversion to integer PCM.
SAFETY_CEILING = 10 ** (-0.1 / 20)
#: Safety limiter window: gain reduction ramps in and out over 20 ms (slow enough not to
#: distort a 50 Hz bass cycle much, fast enough to leave the rest of a bar untouched).
LIMITER_WINDOW_MS = 20.0
#: Raw samples fed to the time stretcher beyond each end of a segment (93 ms at 44.1 kHz),
#: so its ramp-in and flush-out fall outside the kept audio.
_STRETCH_PAD = 4096
#: Context processed on each side of an excerpt so filters and the time stretcher have
#: settled by the first sample returned (46 ms at 44.1 kHz).
_EXCERPT_MARGIN = 2048


# ---------------------------------------------------------------------------------------
# Per-segment processing
# ---------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _equal_power(n: int) -> np.ndarray:
    """Rising equal-power curve sin(pi/2 t) on n samples (sample centres), float32, read-only."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    c = np.sin(0.5 * np.pi * t).astype(np.float32)
    c.flags.writeable = False
    return c


@lru_cache(maxsize=256)
def _raised_cosine(n: int) -> np.ndarray:
    """Rising sin^2(pi/2 t): with its mirror it sums to 1 (for correlated audio), read-only."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    c = (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)
    c.flags.writeable = False
    return c


def _apply_effects(x: np.ndarray, sr: int, ops: Ops, *, with_tail: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """EQ, distortion, reverb, gain on x [channels, n] float32 (already reversed/stretched).

    Returns (y [channels, n], reverb tail [channels, t] or None).
    """
    import pedalboard

    tail = None
    if ops.eq_low_db != 0.0 or ops.eq_high_db != 0.0:
        fx = []
        if ops.eq_low_db != 0.0:
            fx.append(pedalboard.LowShelfFilter(cutoff_frequency_hz=EQ_LOW_HZ, gain_db=ops.eq_low_db))
        if ops.eq_high_db != 0.0:
            fx.append(pedalboard.HighShelfFilter(cutoff_frequency_hz=EQ_HIGH_HZ, gain_db=ops.eq_high_db))
        x = pedalboard.Pedalboard(fx)(x, sr)
    if ops.distortion > 0.0:
        rms_in = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        d = pedalboard.Distortion(drive_db=ops.distortion)(x, sr)
        rms_out = float(np.sqrt(np.mean(np.square(d, dtype=np.float64))))
        # distortion changes the colour, not the loudness: match the input level
        x = (d * (rms_in / rms_out)).astype(np.float32) if rms_out > 1e-9 else d
    if ops.reverb > 0.0:
        n = x.shape[1]
        t = int(round(REVERB_TAIL_S * sr)) if with_tail else 0
        padded = np.concatenate([x, np.zeros((x.shape[0], t), np.float32)], axis=1) if t else x
        # JUCE's reverb scales dry by 2 (and wet by 3) internally: dry_level 0.5 is unity
        rv = pedalboard.Reverb(
            room_size=0.5, damping=0.5, wet_level=float(ops.reverb) * REVERB_WET_SCALE, dry_level=0.5
        )(padded, sr)
        x = rv[:, :n]
        if t:
            tail = rv[:, n:] * _equal_power(t)[::-1]  # new array: the cache stays intact
    if ops.gain_db != 0.0:
        g = np.float32(10 ** (ops.gain_db / 20))
        x = x * g
        if tail is not None:
            tail = tail * g
    return np.ascontiguousarray(x, dtype=np.float32), tail


def _read(y: np.ndarray, a: int, b: int) -> np.ndarray:
    """Raw samples [a, b) [shape=(channels, b - a)]: a view when inside the audio, else
    zero-padded (a grid may end a few samples after the decoded audio)."""
    if a >= 0 and b <= y.shape[1]:
        return y[:, a:b]
    x = np.zeros((y.shape[0], b - a), np.float32)
    ca, cb = max(a, 0), min(b, y.shape[1])
    if cb > ca:
        x[:, ca - a : cb - a] = y[:, ca:cb]
    return x


def _piece_audio(
    y: np.ndarray, sr: int, piece: Piece, q0: int, q1: int, *, margin: int, with_tail: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Piece output samples [q0, q1) (0 = first head-handle sample), before envelopes.

    The piece plays raw samples in play order: its head handle, core and tail handle.
    ``margin`` extra samples of the piece are processed on each side and dropped, so that
    effects with memory have settled (only used for excerpts).
    """
    ops = piece.ops
    tf = ops.time_factor
    rh = int(math.ceil(piece.head * tf)) if tf != 1.0 else piece.head
    rt = int(math.ceil(piece.tail * tf)) if tf != 1.0 else piece.tail
    if ops.reversed:
        lo, hi = piece.raw_start - rt, piece.raw_end + rh
    else:
        lo, hi = piece.raw_start - rh, piece.raw_end + rt
    n_play = hi - lo  # raw samples of the piece, in play order index 0..n_play

    def play(r0: int, r1: int) -> np.ndarray:
        """Raw play-order samples [r0, r1) of the piece."""
        if ops.reversed:
            return np.ascontiguousarray(_read(y, hi - r1, hi - r0)[:, ::-1])
        return _read(y, lo + r0, lo + r1)

    if tf == 1.0:
        m0, m1 = min(margin, q0), min(margin, n_play - q1)
        x = play(q0 - m0, q1 + m1)
        identity = ops.is_identity or (
            ops == Ops(fade_in_s=ops.fade_in_s, fade_out_s=ops.fade_out_s, reversed=ops.reversed)
        )
        if identity:
            return x[:, m0 : m0 + q1 - q0], None
        whole_end = with_tail and m1 == 0 and q1 == n_play  # the tail starts where the piece ends
        out, tail = _apply_effects(np.ascontiguousarray(x, dtype=np.float32), sr, ops, with_tail=whole_end)
        return out[:, m0 : m0 + q1 - q0], tail

    import pedalboard

    # stretched index s of piece sample p: s = p - head + round(rh / tf)
    off = int(round(rh / tf)) - piece.head
    s0, s1 = q0 + off, q1 + off
    # The stretcher's first and last ~50 ms are unreliable (it ramps in and flushes out):
    # feed it raw audio beyond what is kept, from the piece's neighbourhood in the raw.
    pad = _STRETCH_PAD if margin == 0 else margin
    if margin == 0:  # full render: the whole piece in one go
        r0, r1 = -pad, n_play + pad
    else:
        r0, r1 = int(math.floor(s0 * tf)) - pad, int(math.ceil(s1 * tf)) + pad
    x = np.ascontiguousarray(play(r0, r1), dtype=np.float32)  # may reach past the piece
    if margin == 0:
        st = pedalboard.time_stretch(x, sr, stretch_factor=float(tf))
    else:  # excerpts: the fast mode (8 ms instead of 20-45 ms), the waveform differs anyway
        st = pedalboard.time_stretch(x, sr, stretch_factor=float(tf), high_quality=False, use_long_fft_window=False)
    k0 = s0 - int(round(r0 / tf))
    need = q1 - q0
    seg = st[:, max(k0, 0) : max(k0, 0) + need]
    if k0 < 0:
        seg = np.concatenate([np.zeros((y.shape[0], -k0), np.float32), seg], axis=1)[:, :need]
    if seg.shape[1] < need:
        seg = np.concatenate([seg, np.zeros((y.shape[0], need - seg.shape[1]), np.float32)], axis=1)
    return _apply_effects(np.ascontiguousarray(seg), sr, ops, with_tail=with_tail and margin == 0)


def _envelope(lay: Layout, i: int, q0: int, q1: int) -> np.ndarray | None:
    """Gain curve of piece i over its samples [q0, q1): join transitions times fades.

    None means all ones (kept out so that untouched audio stays bit-exact).
    """
    piece = lay.pieces[i]
    total = piece.head + piece.length + piece.tail
    env = None

    def mul(curve: np.ndarray, at: int) -> None:
        """Multiply the piece-coordinate span [at, at+len(curve)) by curve (1 elsewhere)."""
        nonlocal env
        a, b = max(at, q0), min(at + len(curve), q1)
        if b <= a:
            return
        if env is None:
            env = np.ones(q1 - q0, np.float32)
        env[a - q0 : b - q0] *= curve[a - at : b - at]

    def zero(a: int, b: int) -> None:
        mul(np.zeros(max(b - a, 0), np.float32), a)

    if i > 0:
        j = lay.joins[i - 1]
        w = j.end - j.start
        if j.kind in ("crossfade", "overlap"):
            mul(_equal_power(w), 0)
        elif j.kind == "blend":
            mul(_raised_cosine(w), 0)
    if i + 1 < len(lay.pieces):
        j = lay.joins[i]
        w = j.end - j.start
        if j.kind in ("crossfade", "overlap"):
            mul(_equal_power(w)[::-1], total - w)
        elif j.kind == "blend":
            mul(_raised_cosine(w)[::-1], total - w)
    ops = piece.ops
    fi = min(int(round(ops.fade_in_s * lay.sr)), piece.length)
    fo = min(int(round(ops.fade_out_s * lay.sr)), piece.length)
    if fi > 0:
        zero(0, piece.head)  # silence before a fade-in starts
        mul(_equal_power(fi), piece.head)
    if fo > 0:
        mul(_equal_power(fo)[::-1], piece.head + piece.length - fo)
        zero(piece.head + piece.length, total)
    return env


def _mix(y: np.ndarray, sr: int, lay: Layout, o0: int, o1: int, *, margin: int, tails: bool) -> np.ndarray:
    """Output samples [o0, o1) of the layout, before the safety limiter."""
    out = np.zeros((y.shape[0], o1 - o0), np.float32)
    for i, piece in enumerate(lay.pieces):
        p_start = piece.out_start - piece.head  # output sample of piece sample 0
        total = piece.head + piece.length + piece.tail
        q0, q1 = max(0, o0 - p_start), min(total, o1 - p_start)
        has_tail = tails and piece.ops.reverb > 0.0
        if q1 > q0:
            audio, tail = _piece_audio(y, sr, piece, q0, q1, margin=margin, with_tail=has_tail)
            env = _envelope(lay, i, q0, q1)
            if env is not None:
                audio = audio * env
            out[:, p_start + q0 - o0 : p_start + q1 - o0] += audio
            if tail is not None:
                # the reverb rings on after the piece, over whatever follows
                t0 = p_start + total
                a, b = max(t0, o0), min(t0 + tail.shape[1], o1)
                if b > a:
                    out[:, a - o0 : b - o0] += tail[:, a - t0 : b - t0]
    return out


# ---------------------------------------------------------------------------------------
# Public rendering
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderResult:
    """A rendered edit.

    y : np.ndarray [shape=(channels, n_out), float32] at ``sr`` (the raw's rate)
    joins : every join of the merged plan (``Join``); ``cut_positions`` lists the cuts
    safety_gain_db : the safety limiter's largest gain reduction, dB (0.0 when the output
        never went above 1.0)
    peak : output peak before the limiter (linear)
    limited_s : seconds of output the limiter touched
    """

    y: np.ndarray
    sr: int
    joins: tuple[Join, ...]
    safety_gain_db: float
    peak: float
    limited_s: float
    layout: Layout

    @property
    def cut_positions(self) -> np.ndarray:
        """Output sample of each cut join [shape=(n_cuts,), int64] (== join_positions)."""
        return np.array([j.position for j in self.joins if j.is_cut], dtype=np.int64)

    @property
    def duration(self) -> float:
        return self.y.shape[1] / self.sr

    def __array__(self, dtype=None, copy=None):  # np.asarray(result) gives the audio
        return self.y if dtype is None else self.y.astype(dtype)


def _check_audio(y: np.ndarray, sr: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[None, :]
    if y.ndim != 2 or y.shape[1] == 0:
        raise ParameterError(f"y must be [channels, samples] with samples > 0, got shape {y.shape}")
    if sr <= 0:
        raise ParameterError(f"sr must be > 0, got {sr}")
    return y if y.dtype == np.float32 else y.astype(np.float32)


def _check_length(y: np.ndarray, sr: int, plan: EditPlan) -> None:
    """The layout follows the grid (so ``output_duration`` needs no audio); the audio must
    be the grid's recording: a few samples of decoding difference are zero-padded."""
    missing = int(plan.grid.samples(sr)[-1]) - y.shape[1]
    if missing > 0.05 * sr:
        raise ParameterError(
            f"plan's grid lasts {plan.grid.duration:.3f} s but the audio lasts {y.shape[1] / sr:.3f} s"
        )


def render(
    *, y: np.ndarray, sr: int, plan: EditPlan, crossfade_ms: float = DEFAULT_CROSSFADE_MS, limit: bool = True
) -> RenderResult:
    """Render ``plan`` from the raw audio.

    Parameters
    ----------
    y : np.ndarray [shape=(channels, n) or (n,)] raw audio at its native rate
    sr : int > 0, the raw's sample rate (the output has the same rate and channels)
    plan : EditPlan over the raw's beat grid (validated here)
    crossfade_ms : float >= 0, length of the equal-power crossfade at each cut
    limit : apply the safety limiter (rule 5) where the output exceeds 1.0

    Returns
    -------
    RenderResult with ``y`` [shape=(channels, layout(plan, sr).n_out), float32]
    """
    y = _check_audio(y, sr)
    plan.validate()
    _check_length(y, sr, plan)
    lay = layout(plan, sr, crossfade_ms)
    out = _mix(y, sr, lay, 0, lay.n_out, margin=0, tails=True)
    peak = max(float(out.max()), -float(out.min())) if out.size else 0.0
    gain_db, limited = 0.0, 0
    if limit and peak > 1.0:
        gain_db, limited = _limit(out, sr)
    return RenderResult(
        y=out, sr=int(sr), joins=lay.joins, safety_gain_db=gain_db, peak=peak, limited_s=limited / sr, layout=lay
    )


def _limit(out: np.ndarray, sr: int) -> tuple[float, int]:
    """Safety limiter, in place: smooth gain reduction only around samples above 1.0.

    need[t] = min(1, ceiling / peak[t]); g = moving average (w) of the moving minimum (w)
    of need, so g <= need everywhere (every average window lies inside each of its
    minimum windows) and g moves smoothly over ``w`` = LIMITER_WINDOW_MS. Only regions
    within 2w of an over are processed; there, g rounds to exactly 1.0 (float32) away
    from the overs, so everything else stays bit-exact. Returns (largest reduction in dB,
    samples touched).
    """
    from scipy.ndimage import minimum_filter1d

    w = max(3, int(round(LIMITER_WINDOW_MS * sr / 1000)) | 1)
    n = out.shape[1]
    pk = np.abs(out).max(axis=0)
    over = np.flatnonzero(pk > 1.0)
    if len(over) == 0:
        return 0.0, 0
    brk = np.flatnonzero(np.diff(over) > 4 * w)
    starts = np.maximum(over[np.concatenate([[0], brk + 1])] - 2 * w, 0)
    ends = np.minimum(over[np.concatenate([brk, [len(over) - 1]])] + 2 * w + 1, n)
    worst, touched = 1.0, 0
    for a, b in zip(starts, ends):
        need = np.minimum(1.0, SAFETY_CEILING / np.maximum(pk[a:b].astype(np.float64), 1e-12))
        floor = minimum_filter1d(need, size=w, mode="nearest")
        c = np.concatenate([[0.0], np.cumsum(np.pad(floor, (w // 2, w // 2), mode="edge"))])
        g = np.minimum((c[w:] - c[:-w]) / w, need).astype(np.float32)  # min() fixes rounding
        out[:, a:b] *= g
        worst = min(worst, float(g.min()))
        touched += int(np.count_nonzero(g < 1.0))
    return 20 * math.log10(worst), touched


def render_excerpt(
    *, y: np.ndarray, sr: int, plan: EditPlan, start: int, end: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS,
    lay: Layout | None = None,
) -> np.ndarray:
    """Output samples [start, end) of ``render(...)``, computing only what they need.

    Cheap (the environment's reward renders +-50 ms around each join with it). Equal to
    the full render's slice (before its safety limiter) for gain, fades, reverse and joins;
    EQ and distortion see ``_EXCERPT_MARGIN`` samples of context instead of the whole
    segment (relative differences ~1e-3); a time-stretched segment is stretched from
    that context only, and a phase vocoder's output phase depends on where it starts, so
    its waveform differs while its sound and level do not; reverb tails of earlier
    segments and the safety limiter are left out. Samples outside [0, n_out) are 0.

    Returns np.ndarray [shape=(channels, end - start), float32]
    """
    y = _check_audio(y, sr)
    if end < start:
        raise ParameterError(f"excerpt end {end} < start {start}")
    lay = lay or layout(plan, sr, crossfade_ms)
    a, b = max(start, 0), min(end, lay.n_out)
    out = np.zeros((y.shape[0], end - start), np.float32)
    if b > a:
        out[:, a - start : b - start] = _mix(y, sr, lay, a, b, margin=_EXCERPT_MARGIN, tails=False)
    return out


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m envs.render",
        description="Render an edit plan (JSON, editable by hand) from the raw recording.",
    )
    ap.add_argument("raw", help="raw recording (wav, flac, ogg, ...)")
    ap.add_argument("plan", help="plan JSON (EditPlan.to_json / envs.export)")
    ap.add_argument("out", help="output audio file (.wav = 32-bit float, .flac, .ogg)")
    ap.add_argument("--crossfade-ms", type=float, default=DEFAULT_CROSSFADE_MS, help="crossfade at each cut (ms)")
    ap.add_argument("--no-limit", action="store_true", help="do not apply the safety limiter")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        # CLI only: soundfile/soxr and scipy.linalg stay out of ``import envs.render``,
        # which the env, the exports and the report page import on every start
        from datasets.audio import load_audio, write_audio
        from datasets.safety import refuse_overwrite
        from envs.quality import detect_clicks

        refuse_overwrite([args.out], [args.raw, args.plan])  # never render over the raw or the plan
        audio = load_audio(args.raw)
        p = Path(args.plan)
        if not p.is_file():
            raise ParameterError(f"{p}: plan file not found")
        plan = EditPlan.from_json(p.read_text()).validate(source_sha256=audio.sha256)
        if plan.grid.duration > audio.duration + 0.05:
            raise ParameterError(
                f"{p}: plan's grid lasts {plan.grid.duration:.2f} s but {args.raw} lasts {audio.duration:.2f} s"
            )
        res = render(y=audio.y, sr=audio.sr, plan=plan, crossfade_ms=args.crossfade_ms, limit=not args.no_limit)
        write_audio(args.out, y=res.y, sr=res.sr)
        cuts = res.cut_positions
        clicks = detect_clicks(y=res.y, sr=res.sr, positions=cuts)
    except (EditorError, KeyError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, (KeyError, TypeError)):
            msg = f"{args.plan}: malformed plan ({type(exc).__name__}: {msg})"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    kinds: dict[str, int] = {}
    for j in res.joins:
        kinds[j.kind] = kinds.get(j.kind, 0) + 1
    print(f"in:  {audio.duration:8.3f} s  {audio.path}")
    print(f"out: {res.duration:8.3f} s  {args.out}  ({len(res.layout.pieces)} segments)")
    print("joins: " + (", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"))
    print(f"clicks at cuts: {len(clicks)} of {len(cuts)}")
    if res.safety_gain_db != 0.0:
        print(
            f"safety limiter: {res.safety_gain_db:+.2f} dB at most, over {res.limited_s:.2f} s "
            f"(peak was {res.peak:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
