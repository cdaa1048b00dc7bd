"""Scripted editors for the style benchmark (bench/style.py): musicians with their own ears.

Each editor is a consistent habit, the way one person edits every song: it tracks beats
with its own settings of ``librosa.beat.beat_track``, places its own downbeats with its
own rule, counts phrases of its own length from its own first downbeat, compares the
phrases of the whole song (loudness or repetition rank) and cuts only on its own phrase
lines. It never looks at the product's grid (``datasets.beats.track_beats``) or features
(``datasets.features``, ``envs.context``): where the product hears bar lines is exactly
what the benchmark must not hand it. Its edit is an ``envs.plan.EditPlan`` on its own
``BeatGrid``, rendered by ``envs.render.render`` (the renderer shares no decision with the
policy), then delivered as its habits say (WAV, MP3, or a mastering chain at 48 kHz).

=========  ==========================  ======  ===========================  ===========================  ======  ===========
editor     its grid: beat_track         phrase  keeps                        repeat / fade / treatment    jitter  delivery
           tightness, pulse, downbeat
=========  ==========================  ======  ===========================  ===========================  ======  ===========
loud70     100, as tracked, the beat   4 bars  the opening phrase, then     the loudest candidate        -       FLAC 16-bit
           phase with the most                 the loudest phrases until    played twice; 1-bar
           energy below 150 Hz                 70 % of the raw is kept      fade-out
chorus75   400, as tracked, the phase  4 bars  the opening phrase, then     the most repeated            +-20    MP3
           with the most harmony               the most repeated phrases    candidate played twice;      ms
           change                              until the edit lasts 75 s    2-bar fade-out
                                               (at most 80 % of the song)
sections8  100, half time above 140    8 bars  the opening section, then    2-bar fade-out; the          -       mastered,
           BPM, low-band downbeat              the loudest sections until   quietest kept later                  MP3 256k,
                                               60 % of the raw is kept      section +3 dB                        48 kHz WAV
firstdown  100, as tracked, counts     4 bars  the first two phrases (an    low shelf -6 dB on those     -       WAV 16-bit
           from the first beat at              intro is one), then every    two; no fade
           half the song's usual               phrase at least as loud as
           level                               the song's median phrase
tight60    200, double time below 100  4 bars  the opening phrase, then     1-bar fade-out               +-20    MP3 at
           BPM, harmony-change                 the most repeated phrases                                 ms      48 kHz
           downbeat                            until the edit lasts 60 s
                                               (at most 75 % of the song)
=========  ==========================  ======  ===========================  ===========================  ======  ===========

Rules shared by all: 4 beats per bar; an intro before the phrase origin of at least one
bar is a phrase of its own (shorter ones join the first phrase), as is a last piece of
at least one bar; the "candidates" are the phrases after the opening; a target is met by
adding candidates best-first while that brings the kept (raw) or output (edit) duration
closer to it, and the first one that does not ends the search; a repeated phrase is
chosen first and counts towards an output-duration target. Jitter (+-20 ms, seeded by
editor and song) moves every beat boundary of the grid the edit is rendered on, so the
cut points are human, not sample-exact.

Ground truth (``edited/NAME.truth.json``, beside the edit; all times in raw seconds):
``segments`` [[start, end, ops], ...] as rendered (jittered), ``phrases`` (the editor's
phrase boundaries), ``downbeats``, ``repeat`` ([start, end] of the phrase played twice,
or null), ``keep_ratio``, ``plan`` (the EditPlan on the rendered grid), ``style``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from datasets.audio import Audio, load_audio, resample, write_audio
from datasets.beats import BeatGrid
from datasets.errors import AudioError, ParameterError
from envs.plan import EditPlan, Ops, Segment

__all__ = ["EditorStyle", "EditorView", "Decision", "EDITORS", "TRUTH_SUFFIX", "listen", "decide", "editor_plan",
           "make_edit", "load_truth"]

#: Ground-truth file beside each edit: NAME.truth.json (not an audio extension, so pair
#: discovery ignores it).
TRUTH_SUFFIX = ".truth.json"
#: Analysis rate and hop of the editors' ears: librosa's defaults for beat tracking.
SR = 22050
HOP = 512
#: Editors count in 4/4: the music here is game music in 4 (data/tracks README).
BEATS_PER_BAR = 4
#: Every editor's foot starts at librosa's default prior. Other priors (90, 150 BPM) made
#: beat_track lock at 3:2 of the music's tempo on 3 of 12 songs (83 vs 123 BPM), beats no
#: musician taps; editors differ in the pulse they count instead (``octave``).
START_BPM = 120.0
#: "half_if_fast" counts half time above this tempo, "double_if_slow" double time below
#: SLOW_BPM: the octave people disagree on (the tracks' tempi span 70-180 BPM).
FAST_BPM = 140.0
SLOW_BPM = 100.0
#: Low band of the "low_band" downbeat rule: kick drum and bass fundamentals.
LOW_HZ = 150.0
#: How much of each beat the downbeat rules listen to: the attack (4 frames = 93 ms).
ATTACK_FRAMES = 4
#: "first_strong": the first beat whose attack reaches this fraction (-6 dB) of the
#: song's 90th-percentile beat level is where this editor starts counting.
STRONG_FRACTION = 0.5


@dataclass(frozen=True)
class EditorStyle:
    """One editor's habits (the module docstring's table)."""

    name: str
    tightness: float
    """beat_track's tightness: how steadily it taps"""
    octave: str
    """"as_tracked" | "half_if_fast" (above FAST_BPM it taps every other beat) |
    "double_if_slow" (below SLOW_BPM it taps twice per beat): which pulse it counts"""
    downbeat: str
    """"low_band" | "chroma_change" | "first_strong" (see ``listen``)"""
    bars_per_phrase: int
    opening: int
    """phrases always kept at the start"""
    rank_by: str
    """"loudness" | "repetition" | "above_median": how candidates are compared"""
    keep: float | None = None
    """target fraction of the raw kept (unique raw time)"""
    seconds: float | None = None
    """target output duration ..."""
    max_fraction: float = 1.0
    """... at most this fraction of the song's duration"""
    repeat: bool = False
    """the best candidate is played twice in a row"""
    fade_bars: int = 0
    """fade-out over the last bars of the edit"""
    treatment: str = "none"
    """"none" | "gain_quietest" (+3 dB on the quietest kept candidate) | "eq_low_opening"
    (-6 dB low shelf on the opening phrases)"""
    jitter_ms: float = 0.0
    delivery: str = "wav"
    """"wav" / "flac" (16 bit, native rate) | "mp3" | "mp3_48k" | "master48k" (datasets.demo.delivery
    chain: -1 dB, bus compressor, MP3 256 kbit/s, 48 kHz, 16-bit WAV)"""


EDITORS: dict[str, EditorStyle] = {
    s.name: s
    for s in (
        EditorStyle("loud70", 100.0, "as_tracked", "low_band", 4, 1, "loudness", keep=0.70, repeat=True, fade_bars=1,
                    delivery="flac"),
        EditorStyle("chorus75", 400.0, "as_tracked", "chroma_change", 4, 1, "repetition", seconds=75.0,
                    max_fraction=0.8, repeat=True, fade_bars=2, jitter_ms=20.0, delivery="mp3"),
        EditorStyle("sections8", 100.0, "half_if_fast", "low_band", 8, 1, "loudness", keep=0.60, fade_bars=2,
                    treatment="gain_quietest", delivery="master48k"),
        EditorStyle("firstdown", 100.0, "as_tracked", "first_strong", 4, 2, "above_median", treatment="eq_low_opening"),
        EditorStyle("tight60", 200.0, "double_if_slow", "chroma_change", 4, 1, "repetition", seconds=60.0,
                    max_fraction=0.75, fade_bars=1, jitter_ms=20.0, delivery="mp3_48k"),
    )
}

#: The treatments' values are amounts of the action vocabulary (envs/actions.py GAIN_DB,
#: EQ_DB), so a perfect label can express them.
GAIN_DB = 3.0
EQ_LOW_DB = -6.0


@dataclass(frozen=True, eq=False)
class EditorView:
    """A song as one editor hears it.

    grid : the editor's BeatGrid (4/4, its own downbeats)
    origin : beat where its phrase counting starts
    phrases : np.ndarray [shape=(n_phrases + 1,), int] phrase boundaries in beats, 0 .. n_beats
    loudness_db : np.ndarray [shape=(n_phrases,)] mean power of each phrase, dB
    repetition : np.ndarray [shape=(n_phrases,)] max similarity to another phrase, [-1, 1]
    """

    grid: BeatGrid
    origin: int
    phrases: np.ndarray
    loudness_db: np.ndarray
    repetition: np.ndarray

    @property
    def seconds(self) -> np.ndarray:
        """Duration of each phrase [shape=(n_phrases,)]."""
        return np.diff(self.grid.bounds[self.phrases])


@dataclass(frozen=True, eq=False)
class Decision:
    """What the editor decided: phrase indices kept (in order, a repeat listed twice),
    the repeated phrase (or -1) and the plan on the editor's grid."""

    kept: tuple[int, ...]
    repeated: int
    plan: EditPlan


def _beat_attack(x: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Mean of ``x`` [shape=(frames_total,)] over the first ATTACK_FRAMES of each beat."""
    idx = np.clip(frames[:, None] + np.arange(ATTACK_FRAMES)[None, :], 0, len(x) - 1)
    return x[idx].mean(axis=1)


def listen(style: EditorStyle, *, y: np.ndarray, duration: float, name: str = "audio") -> EditorView:
    """How ``style`` hears a song: its beats, downbeats, phrases and their loudness and
    repetition.

    y : np.ndarray [shape=(n,)] mono audio at ``SR`` (``Audio.y_mono``)
    duration : seconds of the recording at its native rate (the grid covers [0, duration])
    name : for error messages
    """
    import librosa

    power = np.abs(librosa.stft(y, n_fft=2048, hop_length=HOP)) ** 2  # (1025, frames)
    # 1. the editor's own beats: its steadiness, then the pulse it counts
    env = librosa.onset.onset_strength(y=y, sr=SR, hop_length=HOP)
    _, frames = librosa.beat.beat_track(onset_envelope=env, sr=SR, hop_length=HOP, start_bpm=START_BPM,
                                        tightness=style.tightness)
    frames = np.asarray(frames, dtype=np.int64)
    if len(frames) < 4 * BEATS_PER_BAR:
        raise AudioError(f"{name}: editor {style.name} hears no steady beat ({len(frames)} beats)")
    times = librosa.frames_to_time(frames, sr=SR, hop_length=HOP)
    bpm = 60.0 / float(np.median(np.diff(times)))
    if style.octave == "half_if_fast" and bpm > FAST_BPM:
        # every other beat: the parity whose beats are played harder
        level = _beat_attack(power.sum(axis=0), frames)
        times = times[int(level[1::2].mean() > level[0::2].mean())::2]
    elif style.octave == "double_if_slow" and bpm < SLOW_BPM:
        times = np.sort(np.r_[times, (times[1:] + times[:-1]) / 2])
    elif style.octave not in ("as_tracked", "half_if_fast", "double_if_slow"):
        raise ParameterError(f"editor {style.name}: unknown octave habit {style.octave!r}")
    frames = np.round(times * SR / HOP).astype(np.int64)
    level = _beat_attack(power.sum(axis=0), frames)
    chroma = librosa.feature.chroma_stft(S=power, sr=SR)  # (12, frames)
    # 2. its downbeat rule: an index into `times` that is a downbeat
    if style.downbeat == "low_band":
        low = power[librosa.fft_frequencies(sr=SR, n_fft=2048) < LOW_HZ].sum(axis=0)
        acc = _beat_attack(low, frames)
        phase = int(np.argmax([acc[p::BEATS_PER_BAR].mean() for p in range(BEATS_PER_BAR)]))
    elif style.downbeat == "chroma_change":
        sync = librosa.util.sync(chroma, frames, aggregate=np.mean)[:, 1:]  # column j = beat j
        sync = sync / (np.linalg.norm(sync, axis=0, keepdims=True) + 1e-9)
        change = np.r_[0.0, 1.0 - np.sum(sync[:, 1:] * sync[:, :-1], axis=0)][: len(frames)]
        phase = int(np.argmax([change[p::BEATS_PER_BAR].mean() for p in range(BEATS_PER_BAR)]))
    elif style.downbeat == "first_strong":
        phase = int(np.flatnonzero(level >= STRONG_FRACTION * np.percentile(level, 90))[0])
    else:
        raise ParameterError(f"editor {style.name}: unknown downbeat rule {style.downbeat!r}")
    grid = BeatGrid.from_beat_times(times, duration=duration, beats_per_bar=BEATS_PER_BAR, downbeat_index=phase)
    n = grid.n_beats
    # 3. phrases counted from the origin: the first downbeat (first_strong: the strong beat)
    if style.downbeat == "first_strong":
        origin = int(np.searchsorted(grid.bounds, times[phase] - 1e-6))
        origin = min(origin, n - 1)
    else:
        origin = int(np.flatnonzero(grid.beat_in_bar == 0)[0])
    length = BEATS_PER_BAR * style.bars_per_phrase
    bounds = [int(b) for b in range(origin, n, length)]
    if bounds and bounds[0] < BEATS_PER_BAR:  # a pickup shorter than a bar joins phrase 0
        bounds = bounds[1:]
    bounds = [0, *bounds]
    if n - bounds[-1] < BEATS_PER_BAR and len(bounds) > 1:  # a last sliver joins the last phrase
        bounds = bounds[:-1]
    phrases = np.asarray([*bounds, n], dtype=np.int64)
    # 4. whole-song comparisons: loudness and repetition of every phrase
    t = grid.bounds[phrases]
    f = np.clip(np.round(t * SR / HOP).astype(np.int64), 0, power.shape[1])
    frame_power = power.sum(axis=0)
    loud = np.array([10 * np.log10(frame_power[a:max(b, a + 1)].mean() + 1e-12) for a, b in zip(f[:-1], f[1:])])
    rep = _repetition(chroma, grid, phrases)
    return EditorView(grid=grid, origin=origin, phrases=phrases, loudness_db=loud, repetition=rep)


def _repetition(chroma: np.ndarray, grid: BeatGrid, phrases: np.ndarray) -> np.ndarray:
    """Max over the other phrases of the mean cosine of their bar-by-bar chroma, aligned
    from each phrase's start over the shorter one (repeated sections score ~0.9+)."""
    bar_frames = np.round(grid.bounds * SR / HOP).astype(np.int64)
    seqs = []
    for a, b in zip(phrases[:-1], phrases[1:]):
        bars = []
        for s in range(a, b, BEATS_PER_BAR):
            f0, f1 = bar_frames[s], bar_frames[min(s + BEATS_PER_BAR, b)]
            v = chroma[:, f0:max(f1, f0 + 1)].mean(axis=1)
            bars.append(v / (np.linalg.norm(v) + 1e-9))
        seqs.append(np.array(bars))
    m = len(seqs)
    rep = np.full(m, -1.0)
    for i in range(m):
        for j in range(m):
            if i != j:
                k = min(len(seqs[i]), len(seqs[j]))
                rep[i] = max(rep[i], float(np.mean(np.sum(seqs[i][:k] * seqs[j][:k], axis=1))))
    return rep


def decide(style: EditorStyle, view: EditorView, *, source_sha256: str = "") -> Decision:
    """The editor's plan of a song it has heard (see the module docstring's rules)."""
    m = len(view.phrases) - 1
    secs = view.seconds
    duration = view.grid.duration
    opening = list(range(min(style.opening, m)))
    cands = [i for i in range(m) if i not in opening]
    if style.rank_by == "loudness":
        ranked = sorted(cands, key=lambda i: (-view.loudness_db[i], i))
    elif style.rank_by == "repetition":
        ranked = sorted(cands, key=lambda i: (-view.repetition[i], i))
    elif style.rank_by == "above_median":
        med = float(np.median(view.loudness_db))
        ranked = [i for i in cands if view.loudness_db[i] >= med]
    else:
        raise ParameterError(f"editor {style.name}: unknown rank_by {style.rank_by!r}")
    repeated = ranked[0] if style.repeat and ranked else -1
    kept = set(opening) | ({repeated} if repeated >= 0 else set())
    if style.rank_by == "above_median":
        kept |= set(ranked)
    else:
        if style.keep is not None:
            target, extra = style.keep * duration, 0.0
        elif style.seconds is not None:
            target = min(style.seconds, style.max_fraction * duration)
            extra = secs[repeated] if repeated >= 0 else 0.0  # the repeat plays twice
        else:
            raise ParameterError(f"editor {style.name}: needs a keep or seconds target")
        q = float(secs[sorted(kept)].sum()) + extra
        for i in ranked:
            if i in kept:
                continue
            if abs(q + secs[i] - target) >= abs(q - target):
                break
            kept.add(i)
            q += secs[i]
    order = []
    for i in sorted(kept):
        order += [i, i] if i == repeated else [i]
    ops = {i: Ops() for i in kept}
    if style.treatment == "gain_quietest":
        later = [i for i in kept if i not in opening]
        if later:
            ops[min(later, key=lambda i: (view.loudness_db[i], i))] = Ops(gain_db=GAIN_DB)
    elif style.treatment == "eq_low_opening":
        for i in opening:
            ops[i] = Ops(eq_low_db=EQ_LOW_DB)
    elif style.treatment != "none":
        raise ParameterError(f"editor {style.name}: unknown treatment {style.treatment!r}")
    segs = [Segment(int(view.phrases[i]), int(view.phrases[i + 1]), ops[i]) for i in order]
    if style.fade_bars > 0:
        last = segs[-1]
        k = BEATS_PER_BAR * style.fade_bars
        if last.n_beats >= 2 * k:  # never fade more than half of the last phrase
            b = view.grid.bounds
            segs[-1:] = [replace(last, raw_end=last.raw_end - k),
                         replace(last, raw_start=last.raw_end - k,
                                 ops=replace(last.ops, fade_out_s=float(b[last.raw_end] - b[last.raw_end - k])))]
    plan = EditPlan(segments=tuple(segs), grid=view.grid, source_sha256=source_sha256).merged().validate()
    return Decision(kept=tuple(order), repeated=repeated, plan=plan)


def _jittered(grid: BeatGrid, ms: float, seed: int) -> BeatGrid:
    """The grid with every inner boundary moved by up to +-ms (uniform, seeded)."""
    if ms <= 0:
        return grid
    rng = np.random.default_rng(seed)
    b = grid.bounds.copy()
    b[1:-1] += rng.uniform(-ms / 1000, ms / 1000, size=len(b) - 2)
    b = np.maximum.accumulate(b)  # beats are >= 250 ms apart: order never changes
    return replace(grid, bounds=b)


def editor_plan(style: EditorStyle, audio: Audio, *, name: str) -> tuple[EditorView, Decision, EditPlan]:
    """(view, decision, plan as rendered) of one song: the rendered plan is the decision's
    on the jittered grid when the editor jitters."""
    view = listen(style, y=audio.y_mono, duration=audio.duration, name=name)
    dec = decide(style, view, source_sha256=audio.sha256)
    seed = zlib.crc32(f"{style.name}:{name}".encode())
    plan = replace(dec.plan, grid=_jittered(dec.plan.grid, style.jitter_ms, seed))
    return view, dec, plan


def _deliver(style: EditorStyle, y: np.ndarray, sr: int, stem: Path) -> Path:
    """Write the edit as the editor delivers it; returns the path."""
    if style.delivery in ("wav", "flac"):  # a DAW's 16-bit export
        return write_audio(stem.with_suffix("." + style.delivery), y=y, sr=sr, subtype="PCM_16")
    if style.delivery in ("mp3", "mp3_48k"):
        if style.delivery == "mp3_48k" and sr != 48000:
            y, sr = resample(y, sr_in=sr, sr_out=48000), 48000
        return write_audio(stem.with_suffix(".mp3"), y=np.clip(y, -1.0, 1.0), sr=sr)
    if style.delivery == "master48k":
        from datasets.demo.delivery import DeliveryParams, deliver

        out = deliver(y=y, sr=sr, params=DeliveryParams(gain_db=-1.0, mp3_kbps=256, sr_out=48000))
        return write_audio(stem.with_suffix(".wav"), y=out.y, sr=out.sr, subtype="PCM_16")
    raise ParameterError(f"editor {style.name}: unknown delivery {style.delivery!r}")


def make_edit(style: EditorStyle, raw_path: str | Path, out_dir: str | Path, *, name: str | None = None) -> dict:
    """Edit one raw recording as ``style`` would; writes ``out_dir/NAME.<ext>`` and
    ``out_dir/NAME.truth.json`` (atomically) and returns the truth record."""
    from datasets.atomic import atomic_write_json
    from envs.render import render

    raw = load_audio(raw_path)
    name = name or Path(raw_path).stem
    view, dec, plan = editor_plan(style, raw, name=name)
    out = render(y=raw.y, sr=raw.sr, plan=plan)
    edited = _deliver(style, out.y, raw.sr, Path(out_dir) / name)
    b, pb = plan.grid.bounds, view.grid.bounds
    rep = dec.repeated
    truth = {
        "editor": style.name,
        "name": name,
        "raw_path": str(raw_path),
        "raw_sha256": raw.sha256,
        "edited_path": str(edited),
        "duration": raw.duration,
        "segments": [[float(b[s.raw_start]), float(b[s.raw_end]), asdict(s.ops)] for s in plan.segments],
        "phrases": pb[view.phrases].tolist(),
        "downbeats": view.grid.times[view.grid.beat_in_bar == 0].tolist(),
        "repeat": None if rep < 0 else [float(pb[view.phrases[rep]]), float(pb[view.phrases[rep + 1]])],
        "kept_phrases": list(dec.kept),
        "keep_ratio": plan.keep_ratio,
        "edit_seconds": out.duration,
        "tempo": view.grid.tempo,
        "plan": plan.to_dict(),
        "style": asdict(style),
    }
    atomic_write_json(Path(out_dir) / f"{name}{TRUTH_SUFFIX}", truth)
    return truth


def load_truth(path: str | Path) -> dict:
    """A truth record written by ``make_edit``; ParameterError naming the file when broken."""
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ParameterError(f"{p}: not a readable truth record ({exc})") from None
    for k in ("segments", "phrases", "downbeats", "repeat", "duration"):
        if k not in rec:
            raise ParameterError(f"{p}: truth record has no {k!r}")
    return rec
