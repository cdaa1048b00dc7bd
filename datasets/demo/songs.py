"""Procedural multi-instrument songs with known beats, downbeats and sections.

A song is a pop form, intro - verse - chorus - verse - chorus - bridge - chorus - outro,
played by a drum kit (kick, snare, hats, crash), a bass, a three-voice chord pad and a
sung-like lead (a buzzy voice through vowel formants, with vibrato). Sections differ the
way a band's do:

==========  ==========================  ===========================  ==========
section     drums                       bass / chords / lead          level
==========  ==========================  ===========================  ==========
intro       kick on 1, hats on beats    pad only (dark)               -7 dB
verse       kick/snare groove, 8th hats roots on beats, dark pad, lead A -3 dB
chorus      busier kick, open hat,      8th-note bass, bright         0 dB
            crash on entry              strummed chords, high lead B
bridge      half-time (kick 1, snare 3) long bass notes, new chords,  -5 dB
                                        lead C on another vowel
outro       kick on 1, hats on beats    pad only, final crash         -6 dB
==========  ==========================  ===========================  ==========

Each section type has its own chord progression (verse, chorus and bridge always
differ). Tempo is 70-170 BPM, meter 4/4 or 3/4, and a "live" song drifts within +-2 %
of its tempo (a smooth random curve) with a few ms of timing jitter. Everything is drawn
from one ``numpy.random.Generator`` seeded by ``seed``: the same seed gives the same
samples, bit for bit.

Synthesis is vectorised (``datasets.demo.synth``): a 90 s stereo song at 44.1 kHz takes
a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import signal

from datasets.demo import synth
from datasets.errors import ParameterError

__all__ = ["Section", "Song", "SongParams", "sample_params", "generate_song", "FORM", "SR"]

#: Output rate: CD rate, what a DAW export of a demo would use.
SR = 44100

#: The song form: (section label, relative length). Lengths are scaled to the requested
#: duration in whole phrases (4 bars), or 2-bar units for very short songs.
FORM: tuple[tuple[str, float], ...] = (
    ("intro", 1.0),
    ("verse", 2.0),
    ("chorus", 2.0),
    ("verse", 2.0),
    ("chorus", 2.0),
    ("bridge", 1.5),
    ("chorus", 2.0),
    ("outro", 1.0),
)

#: Level of each section in dB (the chorus is the loudest, as in most pop songs).
SECTION_DB = {"intro": -7.0, "verse": -3.0, "chorus": 0.0, "bridge": -5.0, "outro": -6.0}

#: Chord progressions as scale degrees (0 = I), one chord per bar. Verse, chorus and
#: bridge draw from disjoint pools so that their harmony always differs.
PROGRESSIONS = {
    "verse": ((0, 5, 3, 4), (0, 3, 0, 4), (0, 4, 5, 3), (5, 3, 0, 4)),
    "chorus": ((3, 4, 0, 0), (3, 4, 2, 5), (0, 4, 3, 4), (3, 0, 4, 5)),
    "bridge": ((1, 4, 1, 4), (5, 2, 3, 1), (2, 5, 1, 4), (3, 3, 1, 1)),
    "intro": ((0, 3, 0, 4), (0, 0, 3, 3), (5, 3, 5, 4)),
}
PROGRESSIONS["outro"] = PROGRESSIONS["intro"]

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)

# Drum patterns per (section, beats per bar): instrument -> [(position in beats, velocity)].
_DRUMS: dict[tuple[str, int], dict[str, list[tuple[float, float]]]] = {
    ("intro", 4): {"kick": [(0, 0.8)], "hat": [(b, 0.5) for b in range(4)]},
    ("verse", 4): {
        "kick": [(0, 1.0), (2, 0.9), (2.5, 0.5)],
        "snare": [(1, 0.8), (3, 0.8)],
        "hat": [(b / 2, 0.6 if b % 2 == 0 else 0.25) for b in range(8)],
    },
    ("chorus", 4): {
        "kick": [(0, 1.0), (1.5, 0.6), (2, 0.95), (3.5, 0.5)],
        "snare": [(1, 1.0), (3, 1.0)],
        "hat": [(b / 2, 0.7 if b % 2 == 0 else 0.3) for b in range(7)],
        "open_hat": [(3.5, 0.45)],
    },
    ("bridge", 4): {"kick": [(0, 0.9)], "snare": [(2, 0.7)], "hat": [(b, 0.45) for b in range(4)], "tom": [(3.5, 0.4)]},
    ("outro", 4): {"kick": [(0, 0.8)], "hat": [(b, 0.45) for b in range(4)]},
    ("intro", 3): {"kick": [(0, 0.8)], "hat": [(b, 0.5) for b in range(3)]},
    ("verse", 3): {
        "kick": [(0, 1.0)],
        "snare": [(1, 0.55), (2, 0.6)],
        "hat": [(b / 2, 0.6 if b % 2 == 0 else 0.25) for b in range(6)],
    },
    ("chorus", 3): {
        "kick": [(0, 1.0), (1.5, 0.55)],
        "snare": [(1, 0.8), (2, 0.85)],
        "hat": [(b / 2, 0.7 if b % 2 == 0 else 0.3) for b in range(5)],
        "open_hat": [(2.5, 0.45)],
    },
    ("bridge", 3): {"kick": [(0, 0.9)], "snare": [(2, 0.6)], "hat": [(b, 0.45) for b in range(3)]},
    ("outro", 3): {"kick": [(0, 0.8)], "hat": [(b, 0.45) for b in range(3)]},
}
_DRUM_GAIN = {"kick": 0.9, "snare": 0.75, "hat": 0.25, "open_hat": 0.2, "crash": 0.3, "tom": 0.4}
_DRUM_PAN = {"kick": 0.0, "snare": -0.1, "hat": 0.35, "open_hat": 0.35, "crash": -0.3, "tom": 0.2}


@dataclass(frozen=True)
class Section:
    """One section of a song. Beats index ``Song.beat_times``; [start, end)."""

    label: str
    start_s: float
    end_s: float
    start_beat: int
    end_beat: int
    n_bars: int


@dataclass(frozen=True)
class SongParams:
    """What a song is drawn from (all chosen by ``sample_params`` unless forced)."""

    tempo: float  # nominal BPM
    beats_per_bar: int  # 3 or 4
    drift: float  # max relative tempo deviation (0 = a click-tight band)
    key_root: int  # MIDI pitch of the key's root in the bass register (40-51)
    minor: bool
    seconds: float  # requested duration


@dataclass(frozen=True, eq=False)
class Song:
    """A synthesised song and its ground truth.

    y : np.ndarray [shape=(2, n), float32] stereo at ``sr``
    beat_times : np.ndarray [shape=(n_beats,), float64] seconds of every beat
    downbeat_times : np.ndarray [shape=(n_bars,), float64] seconds of every bar's first beat
    """

    name: str
    y: np.ndarray
    sr: int
    beat_times: np.ndarray
    downbeat_times: np.ndarray
    beats_per_bar: int
    tempo: float
    sections: tuple[Section, ...]
    family: str
    meta: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.y.shape[1] / self.sr

    def truth(self) -> dict:
        """JSON-ready ground truth: beats, downbeats, meter, tempo, sections."""
        return {
            "name": self.name,
            "family": self.family,
            "sr": self.sr,
            "duration_s": self.duration,
            "tempo": self.tempo,
            "beats_per_bar": self.beats_per_bar,
            "beat_times": self.beat_times.tolist(),
            "downbeat_times": self.downbeat_times.tolist(),
            "sections": [vars(s).copy() for s in self.sections],
            "meta": self.meta,
        }


def sample_params(
    rng: np.random.Generator,
    *,
    seconds: float,
    tempo: float | None = None,
    beats_per_bar: int | None = None,
    drift: float | None = None,
) -> SongParams:
    """Draw tempo (70-170 BPM), meter (3/4 one time in four), drift (+-2 % one time in
    three), key and mode; any of them may be forced."""
    t = float(rng.uniform(70.0, 170.0))
    m = 3 if rng.random() < 0.25 else 4
    d = 0.02 if rng.random() < 0.33 else 0.0
    key = int(rng.integers(40, 52))
    minor = bool(rng.random() < 0.35)
    return SongParams(
        tempo=t if tempo is None else float(tempo),
        beats_per_bar=m if beats_per_bar is None else int(beats_per_bar),
        drift=d if drift is None else float(drift),
        key_root=key,
        minor=minor,
        seconds=float(seconds),
    )


def generate_song(
    *,
    seed: int,
    seconds: float = 90.0,
    tempo: float | None = None,
    beats_per_bar: int | None = None,
    drift: float | None = None,
    sr: int = SR,
    name: str | None = None,
) -> Song:
    """Synthesise one song, deterministically from ``seed``.

    seconds : float in [20, 300], approximate duration (the form is rounded to whole
        bars); tempo, beats_per_bar (3 or 4), drift (0..0.05) force those parameters.
    """
    if not 20.0 <= seconds <= 300.0:
        raise ParameterError(f"seconds must be in [20, 300], got {seconds}")
    if beats_per_bar not in (None, 3, 4):
        raise ParameterError(f"beats_per_bar must be 3 or 4, got {beats_per_bar}")
    if tempo is not None and not 40.0 <= tempo <= 240.0:
        raise ParameterError(f"tempo must be in [40, 240] BPM, got {tempo}")
    if drift is not None and not 0.0 <= drift <= 0.05:
        raise ParameterError(f"drift must be in [0, 0.05], got {drift}")
    rng = np.random.default_rng(seed)
    p = sample_params(rng, seconds=seconds, tempo=tempo, beats_per_bar=beats_per_bar, drift=drift)
    bpb = p.beats_per_bar

    # 1. Form: section lengths in bars.
    bar_s = bpb * 60.0 / p.tempo
    target_bars = (seconds - 2.0) / bar_s
    kinds = sorted({lab for lab, _ in FORM}, key=[lab for lab, _ in FORM].index)
    count = {k: sum(1 for lab, _ in FORM if lab == k) for k in kinds}
    weight = {k: next(w for lab, w in FORM if lab == k) for k in kinds}
    per_weight = target_bars / sum(w for _, w in FORM)
    # Sections are whole 4-bar phrases, unless even one phrase each is far too long
    # (very slow tempo, short song): then 2-bar units.
    unit = 4 if len(FORM) * 4 <= 1.3 * target_bars else 2
    # Every occurrence of a section type has the same length (verse 2 = verse 1): start
    # from each type's share, then add/remove units while that brings the total closer.
    length = {k: max(unit, int(round(weight[k] * per_weight / unit)) * unit) for k in kinds}
    while True:
        total = sum(count[k] * length[k] for k in kinds)
        moves = [(k, d) for k in kinds for d in (unit, -unit) if length[k] + d >= unit]
        best = min(moves, key=lambda m: (abs(total + count[m[0]] * m[1] - target_bars), abs(length[m[0]] + m[1] - weight[m[0]] * per_weight)))
        if abs(total + count[best[0]] * best[1] - target_bars) >= abs(total - target_bars):
            break
        length[best[0]] += best[1]
    bars_per_section = [length[lab] for lab, _ in FORM]
    labels = [lab for lab, _ in FORM]
    n_bars = sum(bars_per_section)
    bar_label = np.repeat(np.arange(len(FORM)), bars_per_section)  # section index per bar

    # 2. Beat times: a smooth tempo curve for "live" songs, then cumulative periods.
    n_beats = n_bars * bpb + 1  # + the final downbeat that ends the song
    k = np.arange(n_beats - 1)
    curve = np.zeros(n_beats - 1)
    if p.drift > 0:
        for _ in range(3):
            curve += np.sin(2 * np.pi * k / rng.uniform(12, 64) + rng.uniform(0, 2 * np.pi))
        curve /= np.abs(curve).max() + 1e-12
    periods = 60.0 / p.tempo * (1.0 + p.drift * curve)
    lead_in = float(rng.uniform(0.05, 0.6))
    beat_times = lead_in + np.r_[0.0, np.cumsum(periods)]
    tail = 2.0
    n = int(np.ceil((beat_times[-1] + tail) * sr))
    jitter_s = 0.006 if p.drift > 0 else 0.0

    def at(pos: np.ndarray) -> np.ndarray:
        """Seconds of positions measured in beats from the first beat."""
        return np.interp(pos, np.arange(n_beats), beat_times)

    # 3. Harmony: a progression per section type, one chord (scale degree) per bar.
    scale = np.array(MINOR if p.minor else MAJOR)
    prog = {lab: PROGRESSIONS[lab][rng.integers(len(PROGRESSIONS[lab]))] for lab in PROGRESSIONS}
    bar_in_section = np.concatenate([np.arange(b) for b in bars_per_section])
    chord = np.array([prog[labels[s]][i % 4] for s, i in zip(bar_label, bar_in_section)])
    bar_db = np.array([SECTION_DB[labels[s]] for s in bar_label])
    bar_gain = 10 ** (bar_db / 20)

    def degree_to_midi(deg: np.ndarray, base: int) -> np.ndarray:
        deg = np.asarray(deg)
        return base + 12 * (deg // 7) + scale[deg % 7]

    kit = synth.drum_kit(sr=sr, rng=rng)
    mix = np.zeros((2, n), dtype=np.float32)

    # 4. Drums: collect every hit, then place each instrument with one bincount.
    hits: dict[str, tuple[list[float], list[float]]] = {k2: ([], []) for k2 in kit}
    for b in range(n_bars):
        lab = labels[bar_label[b]]
        for inst, pattern in _DRUMS[(lab, bpb)].items():
            for pos, vel in pattern:
                hits[inst][0].append(b * bpb + pos)
                hits[inst][1].append(vel * bar_gain[b])
        if lab == "chorus" and bar_in_section[b] == 0:
            hits["crash"][0].append(b * bpb)
            hits["crash"][1].append(1.0)
    hits["crash"][0].append(n_bars * bpb)  # the final hit
    hits["crash"][1].append(0.9)
    hits["kick"][0].append(n_bars * bpb)
    hits["kick"][1].append(0.9)
    for inst, (pos, vel) in hits.items():
        if not pos:
            continue
        t = at(np.asarray(pos)) + rng.normal(0.0, jitter_s, len(pos)) if jitter_s else at(np.asarray(pos))
        v = np.asarray(vel) * rng.uniform(0.85, 1.0, len(vel)) * _DRUM_GAIN[inst]
        synth.add_panned(mix, synth.place(n=n, onsets=np.round(t * sr), gains=v, template=kit[inst]), _DRUM_PAN[inst])

    # 5. Bass: roots, rhythm by section.
    starts, ends, pitch, amp = [], [], [], []
    for b in range(n_bars):
        lab = labels[bar_label[b]]
        root = int(degree_to_midi(chord[b], p.key_root))
        if lab == "verse":
            pos = [(i, i + 0.8, root) for i in range(bpb)]
        elif lab == "chorus":
            pos = [(i / 2, i / 2 + 0.45, root + (12 if i % 4 == 3 else 0)) for i in range(2 * bpb)]
        elif lab == "bridge":
            pos = [(0, bpb - 0.1, root)]
        else:
            continue
        for s0, e0, m in pos:
            starts.append(b * bpb + s0)
            ends.append(b * bpb + e0)
            pitch.append(m)
            amp.append(bar_gain[b])
    if starts:
        bass = synth.render_voice(
            n=n, sr=sr, starts=at(np.asarray(starts)), ends=at(np.asarray(ends)), pitch=np.asarray(pitch),
            amp=0.5 * np.asarray(amp), wave="bass", attack=0.005, decay=0.6, release=0.02,
        )
        synth.add_panned(mix, bass, 0.0)

    # 6. Chords: three voices; sustained bars, restruck on every beat in the chorus.
    starts, ends, pitch, amp = [], [], [], []
    for b in range(n_bars):
        lab = labels[bar_label[b]]
        triad = [int(degree_to_midi(chord[b] + 2 * v, p.key_root + 12)) for v in range(3)]
        if lab == "chorus":
            for i in range(bpb):
                starts.append(b * bpb + i)
                ends.append(b * bpb + i + 0.95)
                pitch.append(triad)
                amp.append(bar_gain[b])
        else:
            starts.append(b * bpb)
            ends.append((b + 1) * bpb - 0.02)
            pitch.append(triad)
            # The pad carries the intro and outro alone, so it plays up there.
            amp.append(bar_gain[b] * (2.0 if lab in ("intro", "outro") else 0.8))
    starts.append(n_bars * bpb)  # the final tonic chord rings over the tail
    ends.append(n_bars * bpb + 1.8 * p.tempo / 60.0)
    pitch.append([int(degree_to_midi(2 * v, p.key_root + 12)) for v in range(3)])
    amp.append(0.7)
    voices = synth.render_voice(
        n=n, sr=sr, starts=at(np.asarray(starts)), ends=at(np.asarray(ends)), pitch=np.asarray(pitch),
        amp=0.1 * np.asarray(amp), wave="saw", attack=0.06, decay=1.2, release=0.05,
    )  # (3, n): root left, third centre, fifth right; a soft (60 ms) pad attack
    theta = (np.array([-0.6, 0.0, 0.6]) + 1.0) * np.pi / 4.0
    pad = np.stack([np.cos(theta), np.sin(theta)]).astype(np.float32) @ voices  # (2, n)
    chorus_bars = np.array([labels[s] == "chorus" for s in bar_label])
    bright_bar = np.r_[chorus_bars.astype(float), 0.0]
    # Brightness follows the bars (a short ramp at each section change, no step).
    bright = np.interp(np.arange(n) / sr, beat_times[::bpb], bright_bar[: len(beat_times[::bpb])]).astype(np.float32)
    dark = signal.sosfilt(signal.butter(2, 1200, "lowpass", fs=sr, output="sos"), pad, axis=-1).astype(np.float32)
    light = signal.sosfilt(signal.butter(2, 4500, "lowpass", fs=sr, output="sos"), pad, axis=-1).astype(np.float32)
    light -= dark
    light *= bright
    mix += dark
    mix += light

    # 7. Lead: a motif per section type on an 8th-note grid, transposed with the chords.
    steps = 2 * bpb * 2  # two bars of 8ths
    motifs = {}
    for lab in ("verse", "chorus", "bridge"):
        onset = rng.random(steps) < np.where(np.arange(steps) % 2 == 0, 0.75, 0.35)
        onset[0] = True
        offs = np.cumsum(rng.choice([-2, -1, 0, 1, 2], size=steps)) % 8
        motifs[lab] = (onset, offs)
    vowel_of = {"verse": "o", "chorus": "a", "bridge": "e"}
    octave = {"verse": 12, "chorus": 19, "bridge": 12}
    lead = np.zeros(n, dtype=np.float32)
    for lab in ("verse", "chorus", "bridge"):
        onset, offs = motifs[lab]
        starts, pitch, amp = [], [], []
        for b in np.flatnonzero(np.array([labels[s] == lab for s in bar_label])):
            half = int(bar_in_section[b] % 2)
            for j in np.flatnonzero(onset[half * 2 * bpb : (half + 1) * 2 * bpb]):
                starts.append(b * bpb + j / 2)
                pitch.append(int(degree_to_midi(chord[b] + offs[half * 2 * bpb + j], p.key_root + octave[lab])))
                amp.append(bar_gain[b])
        if not starts:
            continue
        s_arr = np.asarray(starts)
        # Legato within a phrase; a breath (rest) at every 2-bar boundary.
        nxt = np.r_[s_arr[1:], s_arr[-1] + 1.0]
        breath = np.floor(nxt / (2 * bpb)) > np.floor(s_arr / (2 * bpb))
        e_arr = np.where(breath, np.minimum(nxt, np.ceil(s_arr / (2 * bpb) + 1e-9) * 2 * bpb - 0.5), nxt - 0.05)
        # Only the span this section type sings in is synthesised and filtered (+1 s of
        # filter ring): the lead is silent elsewhere, and this halves its cost.
        t0, t1 = at(s_arr[0]), at(e_arr[-1])
        i0, i1 = int(t0 * sr), min(n, int((t1 + 1.0) * sr))
        src = synth.render_voice(
            n=i1 - i0, sr=sr, starts=at(s_arr) - i0 / sr, ends=at(e_arr) - i0 / sr, pitch=np.asarray(pitch),
            amp=np.asarray(amp), wave="pulse", attack=0.04, decay=3.0, release=0.06, vibrato=0.25,
        )
        lead[i0:i1] += synth.formant_filter(src, sr=sr, vowel=vowel_of[lab])
    synth.add_panned(mix, 1.1 * lead, 0.1)

    # 8. Master: peak at -1 dBFS.
    mix *= 10 ** (-1 / 20) / (np.abs(mix).max() + 1e-12)
    y = mix.astype(np.float32)

    bar_start_beat = np.r_[0, np.cumsum(bars_per_section)] * bpb
    sections = tuple(
        Section(
            label=labels[i],
            start_s=0.0 if i == 0 else float(beat_times[bar_start_beat[i]]),
            end_s=float(n / sr) if i == len(FORM) - 1 else float(beat_times[bar_start_beat[i + 1]]),
            start_beat=int(bar_start_beat[i]),
            end_beat=int(bar_start_beat[i + 1]) + (1 if i == len(FORM) - 1 else 0),
            n_bars=int(bars_per_section[i]),
        )
        for i in range(len(FORM))
    )
    family = f"procedural_{bpb}4" + ("_drift" if p.drift > 0 else "")
    return Song(
        name=name or f"song{seed}",
        y=y,
        sr=sr,
        beat_times=beat_times,
        downbeat_times=beat_times[::bpb].copy(),
        beats_per_bar=bpb,
        tempo=p.tempo,
        sections=sections,
        family=family,
        meta={
            "source": "procedural",
            "seed": int(seed),
            "tempo": p.tempo,
            "drift": p.drift,
            "key_root": p.key_root,
            "minor": p.minor,
            "progressions": {k2: list(v) for k2, v in prog.items()},
        },
    )
