"""The environment's observation: a window of beats around the read head, plus globals.

Layout (the agent's contract; every column is named, never indexed by hope):

``"beats"`` float32 [W, F]: W = 64 consecutive raw beats, the read head at row
``HEAD_INDEX`` = W // 4 = 16: 16 beats of context behind the head, 48 ahead. The
decision at the head is about the material that follows (how much to keep, where the
next phrase starts, whether to loop what comes), and what was already decided is
summarised by the edit-history channels, so the window looks mostly forward. In 4/4 the
48 beats ahead are 12 bars: the largest chunk (TWO_PHRASES, 8 bars) plus the phrase
after it, so the policy sees where any action would land.
Columns: the 121 raw (unnormalised) features of ``datasets.features.FEATURE_NAMES``
(the four that count absolute time are shown length-free, ``LENGTH_FREE`` below),
then the song-level context ``envs.context.CONTEXT_CHANNELS`` (where the beat and its
phrase stand in the whole song: loudness percentiles, repetition, novelty, phrase units
aligned to the section changes; computed once per song, so whole-song decisions such as
"the quietest phrase" or "material heard before" are visible inside the window), then
``HISTORY_CHANNELS``:

=====================  ==============================================================
``hist_decided``       1 for raw beats the head has passed (their fate is decided)
``hist_times_used``    how many times the beat is played
``hist_effect``        1 if played with any effect (EQ, distortion, reverb, time, reverse)
``hist_gain_db``       gain of the last segment that plays the beat, dB (0 if none)
``hist_fade``          1 if played inside a segment with a fade in or out
``hist_kept``          1 if the beat is played at least once in the plan so far
``hist_cut``           1 if decided and not played
``hist_looped``        1 if played more than once
``is_head``            1 on the read-head row
``rel_pos``            (row - HEAD_INDEX) / W
=====================  ==============================================================

The grid's own per-beat facts (bar phase, downbeat, phrase start, song position) are
already feature columns (``bar_phase``, ``is_downbeat``, ``is_phrase_start``,
``song_position``), so they are not repeated here.

``"beat_mask"`` float32 [W]: 1 for real beats, 0 for padding beyond the song's ends
(padding rows are all zeros).

``"globals"`` float32 [G], ``GLOBAL_NAMES``: head phase in its bar, bar in its phrase and
beat in its phrase, position in the
song, target keep ratio, keep ratio so far (of the whole song and of the decided part),
raw duration remaining and output duration so far (both / song duration), loops left
before the reward's loop penalty ((2 + cuts // 3 - loops) / 2, at most 2; negative = over
budget),
JUMP_BACKs left (fraction of the executor's jump budget), fraction of the step cap used,
tempo / 200 BPM, beats per bar / 4. The env fills them
(``envs.env.AudioEditEnv._obs``); this module holds their order.

Length-free: nothing in the observation grows with the song's length, so a
30-minute recording is edited in the style learned on 1-3 minute songs. The features
that count seconds or phrases from the song's start (``time_s``, ``phrase_index``) or to
its end (``time_to_end_s``) saturate at ``EDGE_S`` = 30 s (``EDGE_PHRASES`` = 4 phrases):
every training song (the demo corpus: 60-120 s; ``data/tracks``: 120 s) spans the whole
range at both of its ends, so intros and outros stay visible while the middle of a long
song reads like the middle of a short one. The song's duration (``song_duration_s``) is
not shown (0): how long the edit should be comes in as the target keep ratio. Measured
before this (a BC policy of 24 two-minute tracks on a 10-minute medley of 5 others): the
normalised ``song_duration_s`` was 1e5 standard deviations off its training value,
``time_s`` 17, ``log2(n_beats)`` (a global then) 4.4, and the policy edited the medley in
19 steps (2 a minute; on the held-out 2-minute tracks ~19), 63 % of them FADE_OUT over
8 bars; after (retrained): 10 steps a minute (tracks 18), 74 % KEEP (tracks 64 %), keep
ratio 0.38 (tracks 0.44).

``"type_mask"`` int8 [18], ``"size_mask"`` int8 [18, 5], ``"amount_mask"`` int8 [18, 5]:
the executor's masks (size and amount given the type).

Cost: the per-beat array (features, context, history) is preallocated once per song with
W rows of padding [n_beats + W, F]; an observation is one slice copy plus two constant
columns. The context costs ~ms per song (O(n_units^2) similarities).
"""

from __future__ import annotations

import numpy as np

from datasets.beats import BARS_PER_PHRASE, BeatGrid
from datasets.features import FEATURE_NAMES, N_FEATURES
from envs.context import CONTEXT_CHANNELS, N_CONTEXT, song_context

__all__ = [
    "WINDOW",
    "HEAD_INDEX",
    "HISTORY_CHANNELS",
    "CONTEXT_CHANNELS",
    "BEAT_CHANNELS",
    "N_BEAT_CHANNELS",
    "GLOBAL_NAMES",
    "N_GLOBALS",
    "channel_index",
    "global_index",
    "ObservationBuilder",
    "EDGE_S",
    "EDGE_PHRASES",
    "LENGTH_FREE",
    "length_free",
]

#: Beats in the observation window (see the module docstring for why 64).
WINDOW = 64
#: Row of the read head in the window: a quarter of the window is behind it.
HEAD_INDEX = WINDOW // 4

HISTORY_CHANNELS: tuple[str, ...] = (
    # stored per raw beat and updated when the plan grows
    "hist_decided",
    "hist_times_used",
    "hist_effect",
    "hist_gain_db",
    "hist_fade",
    # derived from the above when a window is cut
    "hist_kept",
    "hist_cut",
    "hist_looped",
    "is_head",
    "rel_pos",
)
#: Seconds from either end of the song up to which absolute time is shown (module docstring).
EDGE_S = 30.0
#: ... and phrases from the start (4 phrases of 4 bars: ~32 s at 120 BPM).
EDGE_PHRASES = 4.0
#: Feature columns that count absolute time: their name in the observation and the value
#: they saturate at (0: not shown). The new names make a checkpoint trained on the raw
#: columns fail ``agent.layout.check_layout`` with a clear message instead of loading.
LENGTH_FREE: dict[str, tuple[str, float]] = {
    "time_s": ("time_s_upto30", EDGE_S),
    "time_to_end_s": ("time_to_end_s_upto30", EDGE_S),
    "song_duration_s": ("song_duration_s_hidden", 0.0),
    "phrase_index": ("phrase_index_upto4", EDGE_PHRASES),
}
_LENGTH_COLS = [(FEATURE_NAMES.index(f), cap) for f, (_, cap) in LENGTH_FREE.items()]


def length_free(values: np.ndarray) -> np.ndarray:
    """The raw features as the observation shows them [shape=(n_beats, 121)]: a copy
    with the ``LENGTH_FREE`` columns clipped to [0, cap]."""
    out = np.array(values, dtype=np.float32, copy=True)
    for c, cap in _LENGTH_COLS:
        out[:, c] = np.clip(out[:, c], 0.0, cap)
    return out


BEAT_CHANNELS: tuple[str, ...] = (
    tuple(LENGTH_FREE[f][0] if f in LENGTH_FREE else f for f in FEATURE_NAMES) + CONTEXT_CHANNELS + HISTORY_CHANNELS
)
N_BEAT_CHANNELS = len(BEAT_CHANNELS)

GLOBAL_NAMES: tuple[str, ...] = (
    "head_beat_phase",
    "head_bar_phase",
    "head_phrase_phase",
    "position",
    "target_keep",
    "keep_ratio",
    "keep_ratio_decided",
    "raw_remaining",
    "output_so_far",
    "loops_left",
    "jumps_left",
    "steps_used",
    "tempo",
    "beats_per_bar",
)
N_GLOBALS = len(GLOBAL_NAMES)

_CH = {name: i for i, name in enumerate(BEAT_CHANNELS)}
_GL = {name: i for i, name in enumerate(GLOBAL_NAMES)}


def channel_index(name: str) -> int:
    """Column of a per-beat channel in ``obs["beats"]``."""
    return _CH[name]


def global_index(name: str) -> int:
    """Entry of a global in ``obs["globals"]``."""
    return _GL[name]


# Column numbers used on the hot path (resolved once, by name).
_DECIDED, _USED, _EFFECT, _GAIN, _FADE = (_CH[c] for c in ("hist_decided", "hist_times_used", "hist_effect", "hist_gain_db", "hist_fade"))
_KEPT, _CUT, _LOOPED, _IS_HEAD, _REL = (_CH[c] for c in ("hist_kept", "hist_cut", "hist_looped", "is_head", "rel_pos"))
assert (_USED, _EFFECT, _GAIN, _FADE) == (_DECIDED + 1, _DECIDED + 2, _DECIDED + 3, _DECIDED + 4)
# ``ObservationBuilder.globals`` fills the vector positionally in this order.
assert GLOBAL_NAMES == (
    "head_beat_phase", "head_bar_phase", "head_phrase_phase", "position", "target_keep", "keep_ratio",
    "keep_ratio_decided", "raw_remaining", "output_so_far", "loops_left", "jumps_left", "steps_used",
    "tempo", "beats_per_bar",
)
_REL_COLUMN = ((np.arange(WINDOW) - HEAD_INDEX) / WINDOW).astype(np.float32)


class ObservationBuilder:
    """Preallocated per-beat array of one song, updated as the plan grows.

    Parameters
    ----------
    values : np.ndarray [shape=(n_beats, 121), float32] raw beat features
    grid : the song's BeatGrid (n_beats must match)
    plan_prior, target_keep : the planner's per-beat prior (``Song.plan_prior``) and the
        episode's keep target, for the plan channels (``envs.context.plan_channels``)
    """

    def __init__(self, values: np.ndarray, grid: BeatGrid, *, plan_prior: np.ndarray | None = None, target_keep: float = 0.5) -> None:
        n = grid.n_beats
        assert values.shape == (n, N_FEATURES), f"features {values.shape} do not match grid ({n} beats x {N_FEATURES})"
        self.n_beats = n
        self.grid = grid
        self._widths = np.diff(grid.bounds).astype(np.float32)
        # rows [HEAD_INDEX, HEAD_INDEX + n) hold the song; the window for head h is rows
        # [h, h + WINDOW), so heads 0..n all slice inside without bounds checks
        self._beats = np.zeros((n + WINDOW, N_BEAT_CHANNELS), dtype=np.float32)
        self._mask = np.zeros(n + WINDOW, dtype=np.float32)
        song = slice(HEAD_INDEX, HEAD_INDEX + n)
        self._beats[song, :N_FEATURES] = length_free(values)
        self._beats[song, N_FEATURES : N_FEATURES + N_CONTEXT] = song_context(values, grid, plan_prior=plan_prior, target_keep=target_keep)
        self._mask[song] = 1.0
        bpb = grid.beats_per_bar
        self._head_phase = np.stack(
            [
                grid.beat_in_bar / bpb,
                (grid.bar % BARS_PER_PHRASE) / BARS_PER_PHRASE,
                ((grid.bar % BARS_PER_PHRASE) * bpb + grid.beat_in_bar) / (BARS_PER_PHRASE * bpb),
            ],
            axis=1,
        ).astype(np.float32)
        # the last two globals, in GLOBAL_NAMES order (no song length: module docstring)
        self._static_globals = (grid.tempo / 200.0, bpb / 4.0)

    def reset(self) -> None:
        """Clear the edit history (a new episode on the same song)."""
        self._beats[:, _DECIDED : _FADE + 1] = 0.0

    # -- history updates (the env calls these when the plan grows) ----------------------
    def set_decided(self, start: int, end: int) -> None:
        """Raw beats [start, end) were passed by the head."""
        self._beats[HEAD_INDEX + start : HEAD_INDEX + end, _DECIDED] = 1.0

    def add_played(self, start: int, end: int, *, times: int = 1, gain_db: float, effect: bool, fade: bool) -> float:
        """Raw beats [start, end) are played ``times`` more (segments were appended).

        Returns the seconds of raw audio played for the first time (for the keep ratio)."""
        rows = self._beats[HEAD_INDEX + start : HEAD_INDEX + end]
        used = rows[:, _USED]
        newly_kept = float(np.dot(self._widths[start:end], used == 0))
        used += times
        rows[:, _GAIN] = gain_db
        if effect:
            rows[:, _EFFECT] = 1.0
        if fade:
            rows[:, _FADE] = 1.0
        return newly_kept

    # -- the observation ------------------------------------------------------------------
    def window(self, head: int) -> tuple[np.ndarray, np.ndarray]:
        """(beats [W, F] float32, beat_mask [W] float32) for the read head at raw beat ``head``."""
        h = min(max(head, 0), self.n_beats)
        beats = self._beats[h : h + WINDOW].copy()
        mask = self._mask[h : h + WINDOW].copy()
        used = beats[:, _USED]
        beats[:, _KEPT] = used > 0
        beats[:, _CUT] = beats[:, _DECIDED] * (used == 0)
        beats[:, _LOOPED] = used > 1
        beats[:, _REL] = _REL_COLUMN * mask  # padding rows stay all-zero
        beats[HEAD_INDEX, _IS_HEAD] = mask[HEAD_INDEX]
        return beats, mask

    def globals(
        self,
        *,
        head: int,
        target_keep: float,
        keep_ratio: float,
        keep_ratio_decided: float,
        raw_remaining: float,
        output_so_far: float,
        loops_left: float,
        jumps_left: float,
        steps_used: float,
    ) -> np.ndarray:
        """The globals vector [G] float32 (all arguments are fractions in about [0, 1])."""
        ph = self._head_phase[head] if head < self.n_beats else (0.0, 0.0, 0.0)
        g = np.array(
            (
                ph[0],
                ph[1],
                ph[2],
                head / self.n_beats,
                target_keep,
                keep_ratio,
                keep_ratio_decided,
                raw_remaining,
                output_so_far,
                loops_left,
                jumps_left,
                steps_used,
                *self._static_globals,
            ),
            dtype=np.float32,
        )
        return g
