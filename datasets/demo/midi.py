"""Render real General-MIDI compositions to stereo audio with their true beats.

Two synthesis paths; ``midi_backend()`` says which one this machine has:

- ``"fluidsynth"``: pretty_midi drives FluidSynth with its bundled General-MIDI soundfont
  (TimGM6mb.sf2). Needs the system library (Debian: ``apt-get install libfluidsynth3``)
  and the ``pyfluidsynth`` wheel. Each instrument is rendered alone (pan controllers
  removed, since pretty_midi keeps only FluidSynth's left channel) and panned here.
- ``"additive"``: the fallback when FluidSynth is missing: pretty_midi's additive
  synthesis of pitched parts (a few harmonics) and ``datasets.demo.synth``'s drum kit
  for the General-MIDI drum notes. It sounds plainer but has the same notes and beats.

True beats come from the MIDI file (``get_beats``/``get_downbeats``, which follow every
tempo change), the meter from its time signature. Long songs are trimmed at a bar line.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from datasets.demo import synth
from datasets.demo.songs import SR, Song
from datasets.errors import AudioError, ParameterError

__all__ = ["midi_backend", "render_midi", "BACKENDS"]

log = logging.getLogger(__name__)

BACKENDS = ("fluidsynth", "additive")

#: Seconds of release/reverb kept after the last bar line (then faded to silence).
TAIL_S = 1.0

#: General-MIDI percussion key -> (kit template, gain). Keys not listed play as a hat.
_GM_DRUMS = {
    35: ("kick", 1.0), 36: ("kick", 1.0),
    37: ("snare", 0.4), 38: ("snare", 0.8), 39: ("snare", 0.6), 40: ("snare", 0.8),
    41: ("tom", 0.6), 43: ("tom", 0.6), 45: ("tom", 0.6), 47: ("tom", 0.6), 48: ("tom", 0.6), 50: ("tom", 0.6),
    42: ("hat", 0.35), 44: ("hat", 0.3), 46: ("open_hat", 0.35),
    49: ("crash", 0.4), 52: ("crash", 0.35), 55: ("crash", 0.35), 57: ("crash", 0.4),
    51: ("open_hat", 0.2), 53: ("open_hat", 0.2), 59: ("open_hat", 0.2),
}


def midi_backend() -> str:
    """``"fluidsynth"`` when pyfluidsynth and its system library load, else ``"additive"``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import fluidsynth  # noqa: F401  (pyfluidsynth; raises if libfluidsynth is missing)
            import pretty_midi.fluidsynth as pmf
    except Exception as exc:  # ImportError, OSError from ctypes: both mean "not here"
        log.debug("fluidsynth unavailable: %s", exc)
        return "additive"
    sf2 = Path(pmf.__file__).with_name(pmf.DEFAULT_SF2)
    return "fluidsynth" if getattr(pmf, "_HAS_FLUIDSYNTH", False) and sf2.exists() else "additive"


def _load(path: Path):
    import pretty_midi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pretty_midi warns about odd meta events in old files
        try:
            return pretty_midi.PrettyMIDI(str(path))
        except Exception as exc:
            raise AudioError(f"{path}: not a readable MIDI file ({exc})") from None


def render_midi(
    path: str | os.PathLike,
    *,
    max_seconds: float = 120.0,
    sr: int = SR,
    backend: str = "auto",
    name: str | None = None,
) -> Song:
    """Render a MIDI file to a stereo ``Song`` with its true beats and downbeats.

    max_seconds : trim at the last bar line at or before this time (plus ``TAIL_S`` of
        release); songs shorter than that are kept whole
    backend : "auto" (``midi_backend()``), "fluidsynth" or "additive"

    Raises ``ParameterError`` for a meter other than 3/4 or 4/4 (the beat grid knows only
    3 and 4 beats per bar) and ``AudioError`` for an unreadable or empty file.
    """
    p = Path(path)
    if backend == "auto":
        backend = midi_backend()
    if backend not in BACKENDS:
        raise ParameterError(f"unknown MIDI backend {backend!r} (choose from {', '.join(BACKENDS)})")
    pm = _load(p)
    if not any(inst.notes for inst in pm.instruments):
        raise AudioError(f"{p}: MIDI file has no notes")

    # 1. Meter: the first time signature (MIDI's default is 4/4). A later change to
    #    another meter ends the usable part of the song.
    ts = pm.time_signature_changes
    num, den = (ts[0].numerator, ts[0].denominator) if ts else (4, 4)
    if den != 4 or num not in (3, 4):
        raise ParameterError(f"{p.name}: meter {num}/{den} not supported (only 3/4 and 4/4)")
    usable_end = pm.get_end_time()
    for t in ts[1:]:
        if (t.numerator, t.denominator) != (num, den):
            usable_end = min(usable_end, t.time)
            break

    # 2. Trim at a bar line: the last downbeat before both limits.
    beats = pm.get_beats()
    downbeats = pm.get_downbeats()
    limit = min(max_seconds, usable_end)
    if limit < pm.get_end_time() - 1e-6:
        cands = downbeats[downbeats <= limit + 1e-6]
        if len(cands) < 3:
            raise ParameterError(f"{p.name}: fewer than 2 whole bars before {limit:.1f} s")
        end = float(cands[-1])
        pm = copy.deepcopy(pm)
        for inst in pm.instruments:
            inst.notes = [nt for nt in inst.notes if nt.start < end - 1e-6]
            for nt in inst.notes:
                nt.end = min(nt.end, end)
            inst.pitch_bends = [b for b in inst.pitch_bends if b.time < end]
            inst.control_changes = [c for c in inst.control_changes if c.time < end]
        trimmed = True
    else:
        end = float(pm.get_end_time())
        trimmed = False
    n = int(np.ceil((end + TAIL_S) * sr))

    # 3. Synthesis, one instrument at a time, panned by its MIDI pan controller.
    rng = np.random.default_rng(_stable_seed(p.name))  # the drum kit's noise
    kit = synth.drum_kit(sr=sr, rng=rng) if backend == "additive" else None
    mix = np.zeros((2, n), dtype=np.float32)
    spread = (-0.35, 0.35, -0.2, 0.2, -0.5, 0.5)
    k_pitched = 0
    for inst in pm.instruments:
        if not inst.notes:
            continue
        pans = [c.value for c in inst.control_changes if c.number == 10]
        if pans:
            position = (pans[0] - 64) / 63.0
        elif inst.is_drum or inst.program in range(32, 40):  # drums and basses sit in the centre
            position = 0.0
        else:
            position = spread[k_pitched % len(spread)]
            k_pitched += 1
        inst = copy.copy(inst)
        inst.control_changes = [c for c in inst.control_changes if c.number != 10]
        if backend == "fluidsynth":
            x = _fluidsynth(inst, sr=sr)
        elif inst.is_drum:
            x = _drums(inst, n=n, sr=sr, kit=kit)
        else:
            x = _additive(inst, sr=sr)
        x = np.asarray(x, dtype=np.float32)[:n]
        if len(x) < n:
            x = np.pad(x, (0, n - len(x)))
        synth.add_panned(mix, x, float(np.clip(position, -1.0, 1.0)))

    # 4. Master: fade the tail to silence, peak at -1 dBFS.
    i_end = int(end * sr)
    mix[:, i_end:] *= np.linspace(1.0, 0.0, n - i_end, dtype=np.float32)
    peak = float(np.abs(mix).max())
    if peak <= 0:
        raise AudioError(f"{p}: rendered silence (backend {backend})")
    mix *= np.float32(10 ** (-1 / 20) / peak)

    beat_times = beats[beats < end - 1e-6]
    downbeat_times = downbeats[downbeats < end - 1e-6]
    tempo_times, tempi = pm.get_tempo_changes()
    tempo = 60.0 / float(np.median(np.diff(beat_times))) if len(beat_times) > 1 else float(tempi[0])
    return Song(
        name=name or f"midi_{p.stem}",
        y=mix,
        sr=sr,
        beat_times=np.asarray(beat_times, dtype=np.float64),
        downbeat_times=np.asarray(downbeat_times, dtype=np.float64),
        beats_per_bar=int(num),
        tempo=tempo,
        sections=(),
        family="midi",
        meta={
            "source": "midi",
            "midi_file": p.name,
            "backend": backend,
            "trimmed": trimmed,
            "end_s": end,
            "time_signature": f"{num}/{den}",
            "n_tempo_changes": int(len(tempi)),
            "tempo_range": [float(np.min(tempi)), float(np.max(tempi))],
        },
    )


def _stable_seed(text: str) -> int:
    """A seed from a name that is the same in every process (``hash`` is salted)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _fluidsynth(inst, *, sr: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return inst.fluidsynth(fs=sr)


def _additive(inst, *, sr: int) -> np.ndarray:
    """pretty_midi's per-note synthesis with a few harmonics (a plain organ-like tone)."""

    def wave(phase: np.ndarray) -> np.ndarray:
        return np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase)

    return 0.3 * inst.synthesize(fs=sr, wave=wave)


def _drums(inst, *, n: int, sr: int, kit: dict[str, np.ndarray]) -> np.ndarray:
    """General-MIDI drum notes played on the synthesised kit."""
    out = np.zeros(n, dtype=np.float32)
    notes = inst.notes
    if not notes:
        return out
    onset = np.array([nt.start for nt in notes])
    vel = np.array([nt.velocity for nt in notes]) / 127.0
    key = np.array([nt.pitch for nt in notes])
    names = np.array([_GM_DRUMS.get(int(k), ("hat", 0.25))[0] for k in key])
    gain = np.array([_GM_DRUMS.get(int(k), ("hat", 0.25))[1] for k in key])
    for name in np.unique(names):
        sel = names == name
        out += synth.place(n=n, onsets=np.round(onset[sel] * sr), gains=vel[sel] * gain[sel], template=kit[name])
    return out
