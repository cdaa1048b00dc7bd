"""The beat grid: where every edit may start and stop.

A ``BeatGrid`` tiles the whole recording with beats, ``bounds[i] <= t < bounds[i+1]``,
from 0 s to the end, so no audio is unreachable by an edit: before the first detected
beat and after the last one the grid is extrapolated with the local beat period, and the
first and last beats may be partial (a pickup, a ringing tail).

Steps of ``track_beats``:
1. onset strength envelope (mel spectral flux, librosa) at hop 512 / 22050 Hz;
2. tempo and beats by librosa's dynamic-programming tracker, whose tightness lets
   the beat period drift by a few percent as a live band does;
3. tempo octave check: a slow tempo whose half-beats carry strong onsets too (hats on
   eighths, the tracker locked onto the snare on 2 and 4) is doubled;
4. meter (3 or 4 beats per bar) and downbeat phase from bar-periodic accents: chord
   changes (chroma novelty), onsets, and kick/bass onsets land on downbeats;
5. extrapolation to cover [0, duration].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from datasets.errors import AudioError, ParameterError

__all__ = ["BeatGrid", "track_beats", "HOP_LENGTH", "BARS_PER_PHRASE", "onset_envelope"]

log = logging.getLogger(__name__)

#: Analysis hop: 512 samples at 22050 Hz = 23.2 ms, librosa's default for beat tracking.
HOP_LENGTH = 512
#: A phrase is 4 bars (the spec's PHRASE size; DESIGN.md defines sizes in bars).
BARS_PER_PHRASE = 4
#: Prior tempo of the tracker. librosa's default; 110 made fast 4/4 songs (>= ~133 BPM)
#: lock onto the snare on 2 and 4 at half tempo (48 procedural songs, 29 MIDI renders: beat
#: F 0.949 -> 0.970 and 0.608 -> 0.618; /work/notes/beats.md).
START_BPM = 120.0
#: Half-beat test for the tempo octave: median onset peak halfway between beats over the
#: median peak on the beats. On 48 procedural songs, those tracked at the right tempo
#: measured 0.00-0.10 and those at half tempo 0.36-0.64; MIDI renders at the right tempo
#: spread over 0.00-0.96 (swing, busy accompaniment), hence the tempo cap below.
HALF_BEAT_RATIO = 0.45
#: The doubled tempo must stay at or under this: above ~180 BPM listeners (and dance
#: tempo conventions) count the half tempo, and a swung 100 BPM song with strong
#: off-beats must not become 200.
MAX_DOUBLED_BPM = 180.0
#: Onset peaks are taken within +-2 frames (+-46 ms) of a beat: the tracker's beats sit
#: within a frame or two of the onset they follow.
PEAK_HALF_WIDTH = 2
#: Kick drum and bass fundamentals: the 8 lowest of the onset envelope's 128 mel bands
#: at 22050 Hz (centres 26-206 Hz). Their onsets mark downbeats in most popular music.
N_LOW_MELS = 8
#: Weight of the low-band onsets in the bar accent (chroma novelty has weight 1, the
#: broadband onsets 0.5). 0.5 and 1.0 both made the meter right on all 48 procedural
#: songs (was 42) and raised their downbeat F 0.83 -> 0.94/0.96; on MIDI renders 1.0
#: lost downbeats (F 0.32) where 0.5 kept them (0.38, was 0.37).
LOW_ACCENT_WEIGHT = 0.5


@dataclass(frozen=True)
class BeatGrid:
    """Beats covering a recording, in seconds.

    bounds : np.ndarray [shape=(n_beats + 1,), float64] beat boundaries; bounds[0] == 0,
        bounds[-1] == duration; beat i is [bounds[i], bounds[i+1])
    beat_in_bar : np.ndarray [shape=(n_beats,), int64] 0 on downbeats
    bar : np.ndarray [shape=(n_beats,), int64] bar index of each beat (the pickup bar,
        if the song starts mid-bar, is bar 0)
    tempo : float, beats per minute (median over the song)
    beats_per_bar : int, 3 or 4
    """

    bounds: np.ndarray
    beat_in_bar: np.ndarray
    bar: np.ndarray
    tempo: float
    beats_per_bar: int

    def __post_init__(self) -> None:
        n = len(self.bounds) - 1
        assert n >= 1, "a grid has at least one beat"
        assert self.bounds[0] == 0.0 and np.all(np.diff(self.bounds) > 0), "bounds increase from 0"
        assert len(self.beat_in_bar) == n and len(self.bar) == n

    @property
    def n_beats(self) -> int:
        return len(self.bounds) - 1

    @property
    def duration(self) -> float:
        return float(self.bounds[-1])

    @property
    def times(self) -> np.ndarray:
        """Start time of each beat, seconds [shape=(n_beats,)]."""
        return self.bounds[:-1]

    @property
    def phrase(self) -> np.ndarray:
        """Phrase index (4 bars) of each beat [shape=(n_beats,)]."""
        return self.bar // BARS_PER_PHRASE

    @property
    def beat_period(self) -> float:
        """Seconds per beat at the median tempo."""
        return 60.0 / self.tempo

    @property
    def is_downbeat(self) -> np.ndarray:
        return self.beat_in_bar == 0

    def samples(self, sr: int) -> np.ndarray:
        """Boundaries as sample indices at rate ``sr`` [shape=(n_beats + 1,), int64]."""
        return np.round(self.bounds * sr).astype(np.int64)

    def to_dict(self) -> dict:
        return {
            "bounds": self.bounds.tolist(),
            "beat_in_bar": self.beat_in_bar.tolist(),
            "bar": self.bar.tolist(),
            "tempo": float(self.tempo),
            "beats_per_bar": int(self.beats_per_bar),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BeatGrid":
        return cls(
            bounds=np.asarray(d["bounds"], dtype=np.float64),
            beat_in_bar=np.asarray(d["beat_in_bar"], dtype=np.int64),
            bar=np.asarray(d["bar"], dtype=np.int64),
            tempo=float(d["tempo"]),
            beats_per_bar=int(d["beats_per_bar"]),
        )

    def retimed(self, ratio: float, offset: float = 0.0) -> "BeatGrid":
        """The beats of a listener who taps ``ratio`` beats per beat of this grid (2:
        double time, 0.5: half time, 2/3: two of theirs in three of ours), the first
        ``offset`` beats (fractional) after this grid's first whole beat, following its
        tempo changes.
        Their downbeat is their first beat (``rephased`` moves it).
        """
        if not 0.25 <= ratio <= 4.0 or offset < 0:
            raise ParameterError(f"retimed: ratio {ratio} not in [0.25, 4] or offset {offset} < 0")
        n = self.n_beats
        period = np.diff(self.bounds)
        first = int(n > 1 and period[0] < 0.75 * np.median(period))  # beat 0 is a partial sliver
        x = np.arange(first + offset, n, 1.0 / ratio)
        times = np.interp(x, np.arange(n + 1, dtype=np.float64), self.bounds)
        times = times[times < self.duration - 1e-3]
        if len(times) < 2 * self.beats_per_bar:
            raise ParameterError(f"retimed: {len(times)} beats at ratio {ratio:.3g} are fewer than two bars")
        return BeatGrid.from_beat_times(times, duration=self.duration, beats_per_bar=self.beats_per_bar, downbeat_index=0)

    def unit_ids(self, bars: int | None) -> np.ndarray:
        """Unit number of each beat for groups of ``bars`` bars [shape=(n_beats,), int64]
        (None: every beat its own unit); a unit is a run of equal numbers.

        Groups follow ``bar // bars``, except the slivers at the song's edges: a leading
        pickup shorter than one bar belongs to the first group and a trailing piece
        shorter than one bar to the last one, the way a musician counts a 1-beat pickup
        as part of the opening phrase, not as a phrase of its own (an edit that keeps
        the opening phrase is then one KEEP PHRASE, not KEEP BEAT + KEEP PHRASE).
        """
        n = self.n_beats
        if bars is None:
            return np.arange(n, dtype=np.int64)
        ids = np.asarray(self.bar, dtype=np.int64) // int(bars)
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        if len(change) == 0:
            return ids
        ids = ids.copy()
        if change[0] < self.beats_per_bar:  # leading sliver joins the next group
            ids[: change[0]] = ids[change[0]]
        if n - change[-1] < self.beats_per_bar:  # trailing sliver joins the previous group
            ids[change[-1]:] = ids[change[-1] - 1]
        return ids

    def rephased(self, *, downbeat_shift: int = 0, bar_offset: int = 0) -> "BeatGrid":
        """The same beats counted the way another listener counts them.

        downbeat_shift : int in [0, beats_per_bar) beats: that listener's downbeats are
            the beats with ``beat_in_bar == downbeat_shift`` here
        bar_offset : int >= 0 bars added to the bar numbering, which moves the 2-bar,
            phrase (``bar // 4``) and 2-phrase (``bar // 8``) groups: with offset o,
            groups of k bars start on the bars b (counted from the first downbeat)
            where (b + o) % k == 0

        Beat boundaries are unchanged; only where bars and phrases start moves (an
        editor's cut points say where *they* hear those lines, alignment/grid.py).
        """
        bpb = self.beats_per_bar
        if not 0 <= downbeat_shift < bpb or bar_offset < 0:
            raise ParameterError(f"rephased: downbeat_shift {downbeat_shift} not in [0, {bpb}) or bar_offset {bar_offset} < 0")
        beat_in_bar = np.mod(self.beat_in_bar - downbeat_shift, bpb).astype(np.int64)
        n_down = np.cumsum(beat_in_bar == 0)  # downbeats at or before each beat
        bar = n_down - (1 if beat_in_bar[0] == 0 else 0)  # a leading pickup is bar 0
        return BeatGrid(
            bounds=self.bounds, beat_in_bar=beat_in_bar, bar=(bar + bar_offset).astype(np.int64),
            tempo=self.tempo, beats_per_bar=bpb,
        )

    @classmethod
    def from_beat_times(
        cls, beat_times: np.ndarray, *, duration: float, beats_per_bar: int, downbeat_index: int = 0
    ) -> "BeatGrid":
        """Build a grid from known beat times (e.g. a MIDI file's), extrapolated to cover
        [0, duration]. ``downbeat_index`` is the index in ``beat_times`` of a downbeat."""
        beat_times = np.asarray(beat_times, dtype=np.float64)
        if beats_per_bar < 2:
            raise ParameterError(f"beats_per_bar must be >= 2, got {beats_per_bar}")
        full, shift = _extrapolate(beat_times, duration)
        bounds = _bounds_from_beats(full, duration)
        # Each grid beat is the beat of `full` that starts at (or, for a merged sliver,
        # within 30 ms after) its start; a partial pickup beat before full[0] gets -1.
        idx_in_full = np.searchsorted(full, bounds[:-1] + 0.03 + 1e-9, side="right") - 1
        k = idx_in_full - (downbeat_index + shift)
        beat_in_bar = np.mod(k, beats_per_bar).astype(np.int64)
        bar_raw = np.floor_divide(k, beats_per_bar)
        bar = (bar_raw - bar_raw[0]).astype(np.int64)
        tempo = 60.0 / float(np.median(np.diff(beat_times))) if len(beat_times) > 1 else 120.0
        return cls(bounds=bounds, beat_in_bar=beat_in_bar, bar=bar, tempo=tempo, beats_per_bar=beats_per_bar)


def onset_envelope(*, y: np.ndarray, sr: int) -> np.ndarray:
    """Onset strength [shape=(frames,)] at ``HOP_LENGTH``; the one the tracker uses."""
    import librosa

    return librosa.onset.onset_strength(y=y, sr=sr, hop_length=HOP_LENGTH, aggregate=np.median)


def track_beats(
    *,
    y: np.ndarray,
    sr: int,
    onset_env: np.ndarray | None = None,
    chroma: np.ndarray | None = None,
    power: np.ndarray | None = None,
    beats_per_bar: int | None = None,
    name: str = "audio",
) -> BeatGrid:
    """Detect beats, tempo, meter and downbeats of a mono signal.

    y : np.ndarray [shape=(n,)] mono audio at ``sr`` (use ``ANALYSIS_SR``)
    onset_env, chroma : optional precomputed onset envelope [shape=(frames,)] and chroma
        [shape=(12, frames)] at ``HOP_LENGTH`` (the feature pipeline shares its STFT)
    power : optional |STFT|^2 [shape=(1025, frames)] of ``y`` (n_fft 2048, ``HOP_LENGTH``),
        for the kick/bass accents of the meter (else computed here: a second STFT)
    beats_per_bar : force the meter instead of estimating it
    name : used in error messages (the file name)

    Raises ``AudioError`` for silent audio, audio where no beat is found, and audio
    shorter than two bars at the detected tempo.
    """
    from datasets import dsp  # librosa's tracker, bit for bit, without librosa's import cost

    duration = len(y) / sr
    if len(y) == 0 or float(np.abs(y).max()) < 10 ** (-90 / 20):
        raise AudioError(f"{name}: the recording is silent, no beats can be found")
    if onset_env is None:
        onset_env = onset_envelope(y=y, sr=sr)
    tempo, beat_frames = dsp.beat_track(
        onset_envelope=onset_env, sr=sr, hop_length=HOP_LENGTH, start_bpm=START_BPM, tightness=100, trim=True
    )
    beat_times = dsp.frames_to_time(beat_frames, sr=sr, hop_length=HOP_LENGTH)
    if len(beat_times) < 4:
        raise AudioError(f"{name}: no steady beat found ({len(beat_times)} beats in {duration:.1f} s)")
    period = float(np.median(np.diff(beat_times)))
    if duration < 2 * 4 * period and _half_beats_are_onsets(onset_env, beat_frames):
        # A short clip whose tempo may be an octave low (the tracker's prior favours
        # ~110 BPM): when the half-beat positions carry clear onsets too, the double
        # tempo is as plausible, and it is the one under which two bars fit.
        beat_times = np.sort(np.r_[beat_times, (beat_times[1:] + beat_times[:-1]) / 2])
        period /= 2
    elif 2 * 60.0 / period <= MAX_DOUBLED_BPM and _half_beat_ratio(onset_env, beat_frames) >= HALF_BEAT_RATIO:
        # Tracked an octave low: the music is as busy between the beats as on them,
        # e.g. the tracker followed the snare on 2 and 4 under eighth-note hats.
        beat_times = np.sort(np.r_[beat_times, (beat_times[1:] + beat_times[:-1]) / 2])
        period /= 2
    tempo = 60.0 / period
    if beats_per_bar is None or beats_per_bar < 2:
        beats_per_bar, phase = _estimate_meter(y=y, sr=sr, beat_times=beat_times, onset_env=onset_env, chroma=chroma, power=power)
    else:
        _, phase = _estimate_meter(
            y=y, sr=sr, beat_times=beat_times, onset_env=onset_env, chroma=chroma, power=power, candidates=(beats_per_bar,)
        )
    if duration < 2 * beats_per_bar * period:
        raise AudioError(
            f"{name}: too short ({duration:.2f} s); need at least 2 bars "
            f"({2 * beats_per_bar * period:.2f} s at {tempo:.0f} BPM)"
        )
    return BeatGrid.from_beat_times(beat_times, duration=duration, beats_per_bar=beats_per_bar, downbeat_index=phase)


def _estimate_meter(
    *,
    y: np.ndarray,
    sr: int,
    beat_times: np.ndarray,
    onset_env: np.ndarray,
    chroma: np.ndarray | None,
    power: np.ndarray | None = None,
    candidates: tuple[int, ...] = (3, 4),
) -> tuple[int, int]:
    """Return (beats_per_bar, index of a downbeat among ``beat_times``).

    Downbeats carry the bar's accents: harmony changes (chroma novelty between
    consecutive beats), the strongest onsets, and kick/bass onsets (the low mel bands'
    onset strength, computed here from ``y``). For each meter m and phase p we
    measure how much more accent falls on beats p, p+m, ... than on the others;
    the best (m, p) wins. A 4/4 song also shows a 2-beat period, which favours m=4
    over m=3 (accent every second beat fits 4, not 3).
    """
    from datasets import dsp

    frames = dsp.time_to_frames(beat_times, sr=sr, hop_length=HOP_LENGTH)
    frames = np.clip(frames, 0, len(onset_env) - 1)
    if chroma is None:
        import librosa

        chroma = librosa.feature.chroma_stft(y=y, sr=sr, hop_length=HOP_LENGTH)
    # sync pads: column 0 is [0, frame_0), column j + 1 is beat j
    sync = dsp.sync(chroma, frames, aggregate=np.median)  # (12, n_beats + 1)
    sync = sync / (np.linalg.norm(sync, axis=0, keepdims=True) + 1e-9)
    # novelty[i] = harmony change INTO beat i (columns i + 1 vs i)
    novelty = np.r_[0.0, 1.0 - np.sum(sync[:, 2:] * sync[:, 1:-1], axis=0)][: len(frames)]
    strength = onset_env[frames]
    low = _peaks(_low_onset_envelope(y=y, sr=sr, power=power), frames)
    accent = _zscore(novelty) + 0.5 * _zscore(strength) + LOW_ACCENT_WEIGHT * _zscore(low)
    n = len(accent)
    best = (candidates[-1], 0, -np.inf)
    for m in candidates:
        if n < 2 * m:
            continue
        for p in range(m):
            on = accent[p::m]
            contrast = on.mean() - accent.mean()
            if contrast > best[2] + 1e-6:
                best = (m, p, contrast)
    if len(candidates) > 1 and best[0] == 3:
        # 3 must beat 4 clearly: a 4/4 song with a weak bar accent should not flip to 3.
        score4 = max(accent[p::4].mean() - accent.mean() for p in range(4)) if n >= 8 else -np.inf
        if best[2] < 1.15 * score4:
            best = (4, int(np.argmax([accent[p::4].mean() for p in range(4)])), score4)
    return int(best[0]), int(best[1])


def _half_beats_are_onsets(onset_env: np.ndarray, beat_frames: np.ndarray) -> bool:
    """True when the points halfway between beats have onsets at least 1.5x the
    envelope's mean: the music moves at twice the detected rate as well."""
    mid = (beat_frames[1:] + beat_frames[:-1]) // 2
    return len(mid) > 0 and float(onset_env[mid].mean()) >= 1.5 * float(onset_env.mean())


def _half_beat_ratio(onset_env: np.ndarray, beat_frames: np.ndarray) -> float:
    """Median onset peak halfway between beats / median onset peak on the beats
    (beat 0 left out: the tracker's first beat often precedes the music)."""
    mid = (beat_frames[1:] + beat_frames[:-1]) // 2
    on = _peaks(onset_env, beat_frames[1:])
    return float(np.median(_peaks(onset_env, mid)) / (np.median(on) + 1e-9))


def _peaks(env: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Max of ``env`` within ``PEAK_HALF_WIDTH`` frames of each frame [shape=frames.shape]."""
    frames = np.clip(frames, 0, len(env) - 1)
    # scipy.ndimage.maximum_filter1d(mode="nearest"), without importing scipy.ndimage
    padded = np.pad(env, PEAK_HALF_WIDTH, mode="edge")
    return np.lib.stride_tricks.sliding_window_view(padded, 2 * PEAK_HALF_WIDTH + 1).max(axis=1)[frames]


def _low_onset_envelope(*, y: np.ndarray, sr: int, power: np.ndarray | None = None) -> np.ndarray:
    """Onset strength of the ``N_LOW_MELS`` lowest mel bands (kick, bass) at ``HOP_LENGTH``,
    mean over the bands (a median would ignore a kick that fills only a few of them).
    ``power``: the caller's |STFT|^2 of ``y`` (n_fft 2048), so the song is transformed once."""
    from datasets import dsp

    n_fft = 2048  # librosa's default, as in onset_envelope
    if power is None:
        power = np.abs(dsp.stft(y, n_fft=n_fft, hop_length=HOP_LENGTH)) ** 2
    basis = dsp.mel_filters(sr=sr, n_fft=n_fft, n_mels=128)[:N_LOW_MELS]
    mel_db = dsp.power_to_db(basis @ power)
    return dsp.onset_strength(S=mel_db, aggregate=np.mean, n_fft=n_fft, hop_length=HOP_LENGTH)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def _extrapolate(beat_times: np.ndarray, duration: float) -> tuple[np.ndarray, int]:
    """Extend beats with the local period to cover [0, duration].

    Returns the extended beats and how many were prepended (so callers can keep
    indices into the original array).
    """
    if len(beat_times) == 0:
        raise ParameterError("no beats to extrapolate")
    if len(beat_times) == 1:
        period = 0.5
    else:
        period_head = float(np.median(np.diff(beat_times[:8])))
        period_tail = float(np.median(np.diff(beat_times[-8:])))
    if len(beat_times) == 1:
        period_head = period_tail = period
    before = []
    t = beat_times[0] - period_head
    while t > 0.0:
        before.append(t)
        t -= period_head
    after = []
    t = beat_times[-1] + period_tail
    while t < duration:
        after.append(t)
        t += period_tail
    full = np.concatenate([np.asarray(before[::-1]), beat_times, np.asarray(after)])
    return full, len(before)


def _bounds_from_beats(full: np.ndarray, duration: float) -> np.ndarray:
    """Boundaries from 0 to ``duration``; a partial beat at each end when needed.

    A partial beat shorter than 30 ms is merged into its neighbour: nobody cuts a
    30 ms sliver, and it would make a beat too short to analyse.
    """
    inside = full[(full > 0.0) & (full < duration)]
    bounds = np.concatenate([[0.0], inside, [duration]])
    if len(bounds) > 2 and bounds[1] - bounds[0] < 0.03:
        bounds = np.delete(bounds, 1)
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 0.03:
        bounds = np.delete(bounds, -2)
    return bounds
