"""Vectorised numpy instruments shared by the procedural songs and the MIDI fallback.

Two building blocks, both O(samples) numpy with no per-sample Python:

- one-shot hits (kick, snare, hats, crash, toms) are short templates added at their
  onsets (``place``, one vector slice per hit);
- pitched parts are monophonic *voices*: a sequence of non-overlapping notes turned into
  per-sample frequency/amplitude tracks with ``np.repeat``, a phase accumulator
  (``cumsum``) and a waveform; chords are several voices.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

__all__ = ["drum_kit", "place", "voice_tracks", "render_voice", "formant_filter", "midi_to_hz", "pan", "add_panned"]


def midi_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


def drum_kit(*, sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Synthesised one-shot templates (float32, peak ~1).

    kick: sine swept 140 -> 48 Hz (the "thump" decays in ~0.3 s) plus a beater click;
    snare: 190 Hz body + high-passed noise; hats: high-passed noise, 45 ms (closed) /
    300 ms (open); crash: 1.4 s noise; tom: a slower, higher kick.
    """

    def t_of(seconds: float) -> np.ndarray:
        return np.arange(int(seconds * sr)) / sr

    t = t_of(0.35)
    f = 48.0 + 92.0 * np.exp(-t / 0.035)
    kick = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.12)
    # The beater's click: a broadband 4 ms burst. Without it a kick lives below 150 Hz
    # only, and onset detectors (median over mel bands) hear the snare alone, i.e.
    # every other beat.
    n_click = int(0.015 * sr)
    kick[:n_click] += 0.7 * rng.standard_normal(n_click) * np.exp(-np.arange(n_click) / (0.004 * sr))

    hp = signal.butter(2, 6000, "highpass", fs=sr, output="sos")
    bp = signal.butter(2, [1200, 8000], "bandpass", fs=sr, output="sos")
    t = t_of(0.22)
    snare = 0.55 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.04)
    snare += 0.8 * signal.sosfilt(bp, rng.standard_normal(len(t))) * np.exp(-t / 0.06)

    t = t_of(0.06)
    hat = signal.sosfilt(hp, rng.standard_normal(len(t))) * np.exp(-t / 0.012)
    t = t_of(0.35)
    open_hat = signal.sosfilt(hp, rng.standard_normal(len(t))) * np.exp(-t / 0.1)
    t = t_of(1.4)
    crash = signal.sosfilt(signal.butter(2, 3000, "highpass", fs=sr, output="sos"), rng.standard_normal(len(t)))
    crash *= np.exp(-t / 0.45)
    t = t_of(0.4)
    f = 90.0 + 60.0 * np.exp(-t / 0.05)
    tom = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.15)

    kit = {"kick": kick, "snare": snare, "hat": hat, "open_hat": open_hat, "crash": crash, "tom": tom}
    return {k: (v / (np.abs(v).max() + 1e-9)).astype(np.float32) for k, v in kit.items()}


def place(*, n: int, onsets: np.ndarray, gains: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Sum ``gains[i] * template`` starting at sample ``onsets[i]`` into a length-``n`` signal.

    Overlapping hits add up; hits that run past the end are cut. One vector slice-add per
    hit (a song has a few hundred hits of a few thousand samples each: ~1 ms), which
    beats an (hits x template) bincount or an FFT convolution of the whole song.
    Returns float32 [shape=(n,)].
    """
    out = np.zeros(n, dtype=np.float32)
    tpl = np.asarray(template, dtype=np.float32)
    for o, g in zip(np.asarray(onsets, dtype=np.int64), np.asarray(gains, dtype=np.float32)):
        if 0 <= o < n:
            k = min(len(tpl), n - o)
            out[o : o + k] += g * tpl[:k]
    return out


def voice_tracks(
    *, n: int, sr: int, starts: np.ndarray, ends: np.ndarray, pitch: np.ndarray, amp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample tracks of a monophonic voice.

    starts, ends : note times in seconds, sorted; a note is cut where the next begins
    pitch : MIDI pitch per note [shape=(notes,)], or per note and voice
        [shape=(notes, voices)] for block chords that share their timing
    amp : linear amplitude per note

    Returns (freq Hz [shape=(n,) or (voices, n)], amp, time since note start s, time to
    note end s), the last three [shape=(n,)], float32. Between notes amp is 0 and the
    frequency holds (no phase jumps).
    """
    s = np.clip(np.round(np.asarray(starts) * sr).astype(np.int64), 0, n)
    e = np.clip(np.round(np.asarray(ends) * sr).astype(np.int64), 0, n)
    e = np.minimum(e, np.r_[s[1:], n])  # monophonic: a note stops when the next starts
    e = np.maximum(e, s)
    # Intervals: [0, s0) rest, [s0, e0) note, [e0, s1) rest, ... [e_last, n) rest.
    edges = np.empty(2 * len(s) + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, n
    edges[1:-1:2], edges[2:-1:2] = s, e
    lengths = np.diff(edges)
    hz = midi_to_hz(pitch)  # (notes,) or (notes, voices) for a chord
    f_int = np.empty((2 * len(s) + 1,) + hz.shape[1:])
    f_int[0] = hz[0]
    f_int[1::2], f_int[2::2] = hz, hz
    a_int = np.zeros(2 * len(s) + 1)
    a_int[1::2] = amp
    # Sample counts fit int32 (2^31 samples = 13 h at 44.1 kHz) and their float32 copies
    # are exact below 2^24 (6 min): half the memory traffic of int64/float64.
    idx = np.arange(n, dtype=np.int32)
    freq = np.repeat(f_int.T, lengths, axis=-1)  # (n,) or (voices, n)
    a = np.repeat(a_int.astype(np.float32), lengths)
    since = (idx - np.repeat(edges[:-1].astype(np.int32), lengths)).astype(np.float32) * np.float32(1.0 / sr)
    until = (np.repeat(edges[1:].astype(np.int32), lengths) - idx).astype(np.float32) * np.float32(1.0 / sr)
    return freq, a, since, until


def render_voice(
    *,
    n: int,
    sr: int,
    starts: np.ndarray,
    ends: np.ndarray,
    pitch: np.ndarray,
    amp: np.ndarray,
    wave: str = "saw",
    attack: float = 0.01,
    decay: float = 1.0,
    release: float = 0.03,
    vibrato: float = 0.0,
) -> np.ndarray:
    """A monophonic voice [shape=(n,), float32], or block chords [shape=(voices, n)] when
    ``pitch`` is [shape=(notes, voices)].

    wave : "saw" (naive, then filtered by the caller), "sine", "bass" (sine + 2nd
        harmonic, soft-saturated) or "pulse"
    decay : exponential decay time constant of the note, s (a plucked feel when short)
    vibrato : depth in semitones of a 5.5 Hz vibrato that fades in over 0.3 s (voice-like)
    """
    if len(starts) == 0:
        return np.zeros(np.shape(pitch)[1:] + (n,), dtype=np.float32)
    freq, a, since, until = voice_tracks(n=n, sr=sr, starts=starts, ends=ends, pitch=pitch, amp=amp)
    # float32 from here: numpy's SIMD sin/exp are ~2x faster, and 24 bits are plenty
    # for a waveform; only the phase accumulator needs float64.
    if vibrato > 0:
        depth = np.sin(np.float32(2 * np.pi * 5.5) * since) * np.minimum(since / np.float32(0.3), np.float32(1.0))
        freq = freq * np.exp2(np.float32(vibrato / 12.0) * depth)
    phase = np.cumsum(freq / sr, axis=-1)
    phase -= np.floor(phase)
    phase = phase.astype(np.float32)
    if wave == "saw":
        x = phase * np.float32(2.0) - np.float32(1.0)
    elif wave == "pulse":
        x = np.where(phase < 0.3, np.float32(1.0), np.float32(-0.43))
    elif wave == "sine":
        x = np.sin(np.float32(2 * np.pi) * phase)
    elif wave == "bass":
        x = np.tanh(np.float32(1.5) * (np.sin(np.float32(2 * np.pi) * phase) + np.float32(0.35) * np.sin(np.float32(4 * np.pi) * phase)))
    else:
        raise ValueError(f"unknown wave {wave!r}")
    env = np.exp(since * np.float32(-1.0 / decay))
    env *= np.minimum(since * np.float32(1.0 / attack), np.float32(1.0))
    env *= np.minimum(until * np.float32(1.0 / release), np.float32(1.0))
    env *= a
    x *= env
    return x


#: Vowel formants (F1, F2) in Hz, from Peterson & Barney's averages for a male voice.
VOWELS = {"a": (730.0, 1090.0), "o": (570.0, 840.0), "e": (530.0, 1840.0), "i": (270.0, 2290.0), "u": (300.0, 870.0)}


def formant_filter(x: np.ndarray, *, sr: int, vowel: str) -> np.ndarray:
    """Two resonant band-passes at the vowel's formants: a buzzy source sounds sung."""
    out = np.zeros_like(x)
    for f0, g in zip(VOWELS[vowel], (1.0, 0.6)):
        sos = signal.butter(1, [f0 / 1.25, f0 * 1.25], "bandpass", fs=sr, output="sos")
        out += g * signal.sosfilt(sos, x)
    return out


def pan(x: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan of a mono signal; position in [-1 (left), 1 (right)] -> (2, n)."""
    theta = (position + 1.0) * np.pi / 4.0
    return np.stack([np.cos(theta) * x, np.sin(theta) * x])


def add_panned(mix: np.ndarray, x: np.ndarray, position: float) -> None:
    """``mix += pan(x, position)`` in place, without the (2, n) temporary."""
    theta = (position + 1.0) * np.pi / 4.0
    mix[0] += np.float32(np.cos(theta)) * x
    mix[1] += np.float32(np.sin(theta)) * x
