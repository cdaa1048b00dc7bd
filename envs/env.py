"""The editing environment: a read head walks a song's beats and a policy edits it.

Every step takes one factored action, runs it through the shared ``envs.executor.Executor``
(the same code that turns aligned labels into plans and plans into oracle actions, so
what is trained is what is rendered), and the plan grows. The episode's reward arrives
once, at the end (``envs.reward``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from envs.actions import N_AMOUNTS, N_SIZES, N_TYPES, ActionType
from envs.observation import N_BEAT_CHANNELS, N_GLOBALS, WINDOW, ObservationBuilder
from envs.executor import Executor, Masks
from envs.plan import EditPlan, Ops
from envs.reward import (
    CUTS_PER_EXTRA_LOOP,
    DEFAULT_TARGET_KEEP,
    LOOP_BASE_ALLOWANCE,
    RewardContext,
    RewardResult,
    RewardWeights,
    episode_reward,
)

__all__ = ["Song", "AudioEditEnv", "make_vector_env", "song_reward_context"]

log = logging.getLogger(__name__)

_SWAP, _REORDER = int(ActionType.SWAP_NEXT), int(ActionType.REORDER)
_KEEP = int(ActionType.KEEP)
_IDENTITY = Ops()


@dataclass(frozen=True, eq=False)
class Song:
    """One song the environment can edit.

    values : np.ndarray [shape=(n_beats, 121), float32] raw beat features (FEATURE_NAMES)
    grid : its BeatGrid
    name : label for logs and ``info["song"]``
    sha256 : the raw audio's hash (copied into plans)
    y, sr : optional raw audio [shape=(channels, n)] at its native rate, for the reward's
        click / level check at the real joins
    human_plan : optional aligned human plan of this song (the reward's imitation term)
    plan_prior : optional [shape=(n_beats, 5)] whole-song plan of the editor's style
        (agent/planner.py; ``envs.context.PLAN_PRIOR_COLUMNS``), shown to the policy as
        the plan channels of the observation
    """

    values: np.ndarray
    grid: BeatGrid
    name: str = "song"
    sha256: str = ""
    y: np.ndarray | None = None
    sr: int | None = None
    human_plan: EditPlan | None = None
    plan_prior: np.ndarray | None = None

    def __post_init__(self) -> None:
        from datasets.features import N_FEATURES

        if self.values.shape != (self.grid.n_beats, N_FEATURES):
            raise ParameterError(
                f"song {self.name}: features {self.values.shape} do not match its grid ({self.grid.n_beats} beats x {N_FEATURES})"
            )
        if self.human_plan is not None and self.human_plan.grid.n_beats != self.grid.n_beats:
            raise ParameterError(f"song {self.name}: human plan has {self.human_plan.grid.n_beats} beats, grid {self.grid.n_beats}")
        if self.plan_prior is not None and self.plan_prior.shape != (self.grid.n_beats, 5):
            raise ParameterError(f"song {self.name}: plan prior {self.plan_prior.shape} does not match its grid ({self.grid.n_beats} beats x 5)")

    @classmethod
    def from_features(cls, feats, *, audio=None, human_plan: EditPlan | None = None, name: str | None = None,
                      plan_prior: np.ndarray | None = None) -> "Song":
        """From ``datasets.features.BeatFeatures`` (+ optional ``datasets.audio.Audio``)."""
        return cls(
            values=np.ascontiguousarray(feats.values, dtype=np.float32),
            grid=feats.grid,
            name=name or (Path(audio.path).stem if audio is not None else "song"),
            sha256=feats.sha256,
            y=None if audio is None else audio.y,
            sr=None if audio is None else audio.sr,
            human_plan=human_plan,
            plan_prior=plan_prior,
        )

    @classmethod
    def load(cls, path: str | Path, *, with_audio: bool = True, human_plan: EditPlan | None = None, stems: str = "auto") -> "Song":
        """Load a recording and its (cached) features."""
        from datasets.audio import load_audio
        from datasets.features import extract_features

        audio = load_audio(path)
        feats = extract_features(audio, stems=stems)
        return cls.from_features(feats, audio=audio if with_audio else None, human_plan=human_plan, name=Path(path).stem)


def _as_song(x, i: int) -> Song:
    if isinstance(x, Song):
        return x
    if isinstance(x, tuple) and len(x) == 2:
        values, grid = x
        return Song(values=np.ascontiguousarray(values, dtype=np.float32), grid=grid, name=f"song{i}")
    if hasattr(x, "values") and hasattr(x, "grid"):
        return Song.from_features(x, name=f"song{i}")
    raise ParameterError(f"songs[{i}]: expected Song, BeatFeatures or (values, grid), got {type(x).__name__}")


def song_reward_context(song: Song, *, target_keep: float, use_audio: bool = True) -> RewardContext:
    """The reward's view of a song: per-beat level (``rms_db``) and timbre (chroma and
    MFCC 1..12, each column z-scored over the song so that cosine similarity measures
    difference from the song's average, not the shared offset), by feature name."""
    from datasets.features import feature_index

    energy = song.values[:, feature_index("rms_db")].astype(np.float64)
    pitch = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
    names = [f"chroma_{p}" for p in pitch] + [f"mfcc_{i}" for i in range(1, 13)]
    assert len(names) == 24, names
    timbre = song.values[:, [feature_index(n) for n in names]].astype(np.float64)
    timbre = (timbre - timbre.mean(axis=0)) / (timbre.std(axis=0) + 1e-9)
    audio = use_audio and song.y is not None
    return RewardContext(
        grid=song.grid,
        energy_db=energy,
        timbre=timbre,
        target_keep=target_keep,
        y=song.y if audio else None,
        sr=song.sr if audio else None,
        human_plan=song.human_plan,
    )


class _SongState:
    """Per-song objects built once and reused by every episode on that song."""

    def __init__(self, song: Song, env: "AudioEditEnv") -> None:
        self.song = song
        self.builder = ObservationBuilder(song.values, song.grid, plan_prior=song.plan_prior, target_keep=env.target_keep)
        self.executor = Executor(
            song.grid, source_sha256=song.sha256, max_steps=env.max_steps, jump_budget=env.jump_budget, loop_budget=env.loop_budget
        )
        self.ctx = song_reward_context(song, target_keep=env.target_keep, use_audio=env.reward_audio)
        self.widths = np.diff(song.grid.bounds)
        self.duration = float(song.grid.duration)
        self.cum = np.concatenate([[0.0], np.cumsum(self.widths)])  # seconds at each beat bound


class AudioEditEnv(gym.Env):
    """Edit a raw recording beat by beat with factored actions.

    ## Description
    A read head starts at raw beat 0 of a song (drawn from ``songs`` at each reset). Each
    step applies one action of the 18 x 5 x 5 vocabulary (``envs.actions``: KEEP, CUT,
    LOOP, ... with a grid-aligned size and an amount) to the material at the head, through
    the shared ``Executor``; the plan (``EditPlan``) grows and the head moves. The
    finished plan is what ``envs.render`` plays.

    ## Action Space
    ``MultiDiscrete([18, 5, 5])``: (type, size, amount), ``envs.actions`` gives their
    meanings. In each state the executor masks what is impossible or meaningless; the
    masks are in the observation and in ``action_masks()``. **A masked action is never
    executed**: it is replaced by the nearest valid one (type: KEEP, which is valid in
    every state before the end; size and amount: the valid index closest to the one
    asked for, ties to the smaller), ``info["invalid_action"]`` is True for that step,
    the episode counts them (``info["n_invalid"]`` at the end) and the step reward is
    ``invalid_action_penalty`` (default 0). Replacing rather than raising keeps random
    exploration and ``check_env`` well defined; a masked policy never triggers it.

    ## Observation Space
    ``Dict`` (layout and channel names in ``envs.observation``):

    | key           | shape     | dtype   | content                                           |
    |---------------|-----------|---------|---------------------------------------------------|
    | beats         | (64, F)   | float32 | 121 raw features + edit-history channels per beat |
    | beat_mask     | (64,)     | float32 | 1 = real beat, 0 = padding                        |
    | globals       | (G,)      | float32 | head phase, position, keep ratios, budgets, ...   |
    | type_mask     | (18,)     | int8    | allowed types                                     |
    | size_mask     | (18, 5)   | int8    | allowed sizes given each type                     |
    | amount_mask   | (18, 5)   | int8    | allowed amounts given each type                   |

    The window holds beats [head - 16, head + 48) (head on row 16). Features are raw:
    the agent owns the normaliser.

    ## Rewards
    0 at every step (plus ``invalid_action_penalty`` on replaced actions). At the last
    step the episode-end reward (``envs.reward.episode_reward``: keep-ratio band, loop
    budget, jumps, diversity, cut ratio around the target, coherence, phrase alignment,
    edit structure, clicks and levels at the joins, flow, reordering, and imitation of
    the song's human plan when there is one). ``info["reward_components"]`` holds the
    weighted terms (they sum to the reward / ``weights.scale``), ``info["reward_scores"]``
    the unweighted ones.

    ## Starting State
    Head at beat 0, empty plan, full budgets; the song is drawn uniformly with
    ``self.np_random`` (or chosen with ``reset(options={"song": i})``).

    ## Episode End
    Terminated when the head reaches the end of the song. Truncated at the step cap
    (``max_steps``, default the executor's ``max(16, 4 * n_beats)``): JUMP_BACK and
    REPEAT_PREV do not advance the head, so an episode could otherwise last forever. The
    reward is paid at both; at truncation the unvisited rest of the song counts as cut.

    ## Arguments
    songs : one or a list of ``Song`` / ``BeatFeatures`` / ``(values, grid)``
    target_keep : keep ratio the reward aims at; None = 45 %. A run's value is the median
        of its aligned pairs (``envs.reward.target_keep_from``), set by the caller
    weights : ``RewardWeights``
    max_steps, jump_budget, loop_budget : executor budgets (None = its defaults)
    reward_audio : measure clicks / levels on a local render when a song has audio
    score_episodes : False skips the episode-end reward (benchmarks of stepping alone)
    invalid_action_penalty : step reward of a replaced (masked) action, <= 0

    ## Version History
    v0: first version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        songs,
        *,
        target_keep: float | None = None,
        weights: RewardWeights = RewardWeights(),
        max_steps: int | None = None,
        jump_budget: int | None = None,
        loop_budget: int | None = None,
        reward_audio: bool = True,
        score_episodes: bool = True,
        invalid_action_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        single_pair = isinstance(songs, tuple) and len(songs) == 2 and isinstance(songs[1], BeatGrid)
        if isinstance(songs, Song) or single_pair or (hasattr(songs, "values") and hasattr(songs, "grid")):
            songs = [songs]
        self.songs: list[Song] = [_as_song(s, i) for i, s in enumerate(songs)]
        if not self.songs:
            raise ParameterError("AudioEditEnv needs at least one song")
        if render_mode is not None:
            raise ParameterError(f"render_mode {render_mode!r} not supported (use envs.render on the plan)")
        if invalid_action_penalty > 0:
            raise ParameterError(f"invalid_action_penalty must be <= 0, got {invalid_action_penalty}")
        self.render_mode = None
        self.target_keep = float(target_keep) if target_keep is not None else DEFAULT_TARGET_KEEP
        self.weights = weights
        self.max_steps = max_steps
        self.jump_budget = jump_budget
        self.loop_budget = loop_budget
        self.reward_audio = reward_audio
        self.score_episodes = score_episodes
        self.invalid_action_penalty = float(invalid_action_penalty)
        log.debug("AudioEditEnv: %d songs, target keep ratio %.3f", len(self.songs), self.target_keep)

        self.action_space = spaces.MultiDiscrete([N_TYPES, N_SIZES, N_AMOUNTS])
        self.observation_space = spaces.Dict(
            {
                "beats": spaces.Box(-np.inf, np.inf, shape=(WINDOW, N_BEAT_CHANNELS), dtype=np.float32),
                "beat_mask": spaces.Box(0.0, 1.0, shape=(WINDOW,), dtype=np.float32),
                "globals": spaces.Box(-np.inf, np.inf, shape=(N_GLOBALS,), dtype=np.float32),
                "type_mask": spaces.MultiBinary(N_TYPES),
                "size_mask": spaces.MultiBinary([N_TYPES, N_SIZES]),
                "amount_mask": spaces.MultiBinary([N_TYPES, N_AMOUNTS]),
            }
        )
        self._states: dict[int, _SongState] = {}
        self._mask_cache: dict[int, tuple] = {}
        self._valid_cache: dict[int, tuple] = {}
        self._st: _SongState | None = None
        self._song_index = -1
        self.last_plan: EditPlan | None = None
        self.last_reward: RewardResult | None = None

    # -- helpers -------------------------------------------------------------------------
    def _state(self, i: int) -> _SongState:
        st = self._states.get(i)
        if st is None:
            st = self._states[i] = _SongState(self.songs[i], self)
        return st

    @property
    def song(self) -> Song:
        assert self._st is not None, "call reset() first"
        return self._st.song

    @property
    def executor(self) -> Executor:
        assert self._st is not None, "call reset() first"
        return self._st.executor

    def action_masks(self) -> Masks:
        """The executor's masks of the current state (bool; see ``envs.executor.Masks``)."""
        return self.executor.masks()

    def _obs(self) -> dict[str, np.ndarray]:
        st = self._st
        ex = st.executor
        head = ex.head
        beats, mask = st.builder.window(head)
        decided_s = st.cum[self._frontier]
        kept_s = self._kept_s
        allowance = LOOP_BASE_ALLOWANCE + ex.n_cuts // CUTS_PER_EXTRA_LOOP
        g = st.builder.globals(
            head=head,
            target_keep=self.target_keep,
            keep_ratio=kept_s / st.duration,
            # every appended beat lies before the frontier (the head moves past what it appends)
            keep_ratio_decided=kept_s / decided_s if decided_s > 0 else 0.0,
            raw_remaining=(st.duration - st.cum[min(head, ex.n_beats)]) / st.duration,
            output_so_far=ex.out_seconds / st.duration,
            # saturates at 2 x the base allowance: a long song's many cuts would otherwise
            # raise it far past anything a training song shows (envs.observation)
            loops_left=min(allowance - ex.n_loops, 2 * LOOP_BASE_ALLOWANCE) / LOOP_BASE_ALLOWANCE,
            jumps_left=ex.jumps_left / ex.jump_budget if ex.jump_budget > 0 else 0.0,
            steps_used=ex.n_steps / ex.max_steps,
        )
        self._masks = m = ex.masks()
        tm, sm, am = self._int8_masks(m)
        # fresh arrays every call: gymnasium's contract (callers keep observations)
        return {"beats": beats, "beat_mask": mask, "globals": g, "type_mask": tm.copy(), "size_mask": sm.copy(), "amount_mask": am.copy()}

    def _valid_set(self, ex: Executor) -> frozenset:
        """The executor's valid actions as a set, cached per state like its masks."""
        m = self._masks  # the masks of the last observation: the state has not moved since
        hit = self._valid_cache.get(id(m))
        if hit is None or hit[0] is not m:
            if len(self._valid_cache) > 100_000:
                self._valid_cache.clear()
            hit = self._valid_cache[id(m)] = (m, frozenset(ex.valid_actions()))
        return hit[1]

    def _int8_masks(self, m: Masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """int8 versions of the executor's masks, cached per Masks object (the executor
        caches one per state) and read-only, so no step pays for the conversion twice."""
        hit = self._mask_cache.get(id(m))
        if hit is None or hit[0] is not m:
            arrs = tuple(x.astype(np.int8) for x in (m.type, m.size, m.amount))
            for x in arrs:
                x.flags.writeable = False
            if len(self._mask_cache) > 100_000:
                self._mask_cache.clear()
            hit = self._mask_cache[id(m)] = (m, *arrs)
        return hit[1], hit[2], hit[3]

    @staticmethod
    def _nearest(row: np.ndarray, i: int) -> int:
        ok = np.flatnonzero(row)
        return int(ok[np.argmin(np.abs(ok - i))])  # argmin takes the first (smaller) on ties

    def project_action(self, t: int, s: int, a: int) -> tuple[int, int, int]:
        """The valid action a masked (t, s, a) is replaced by (itself when valid)."""
        m = self.executor.masks()
        if not (0 <= t < N_TYPES) or not m.type[t]:
            t = _KEEP
        if not (0 <= s < N_SIZES) or not m.size[t, s]:
            s = self._nearest(m.size[t], s)
        if not (0 <= a < N_AMOUNTS) or not m.amount[t, a]:
            a = self._nearest(m.amount[t], a)
        return t, s, a

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "song" in options:
            i = int(options["song"])
            if not 0 <= i < len(self.songs):
                raise ParameterError(f"options['song'] = {i} outside [0, {len(self.songs)})")
        else:
            i = int(self.np_random.integers(len(self.songs)))
        self._song_index = i
        self._st = st = self._state(i)
        st.executor.reset()
        st.builder.reset()
        self._frontier = 0
        self._kept_s = 0.0
        self._types: list[int] = []
        self._n_invalid = 0
        self.last_plan = None
        self.last_reward = None
        return self._obs(), {"song": st.song.name, "song_index": i}

    def step(self, action):
        assert self._st is not None, "call reset() before step()"
        st = self._st
        ex = st.executor
        assert not ex.done, "episode is over; call reset()"
        t, s, a = int(action[0]), int(action[1]), int(action[2])
        invalid = (t, s, a) not in self._valid_set(ex)
        if invalid:
            t, s, a = self.project_action(t, s, a)
            self._n_invalid += 1
        r = ex.step(t, s, a)
        self._types.append(t)
        self._record(r.head_before, r.head_after, r.n_appended, t)

        terminated = ex.head >= ex.n_beats
        truncated = ex.done and not terminated
        reward = self.invalid_action_penalty if invalid else 0.0
        info: dict = {"invalid_action": invalid}
        if terminated or truncated:
            self.last_plan = plan = ex.plan()
            info.update(song=st.song.name, n_steps=ex.n_steps, n_invalid=self._n_invalid, keep_ratio=plan.keep_ratio if plan.segments else 0.0)
            if self.score_episodes:
                res = self.last_reward = episode_reward(plan, self._types, st.ctx, self.weights)
                reward += res.total
                info["reward_components"] = res.weighted
                info["reward_scores"] = res.scores
        return self._obs(), float(reward), terminated, truncated, info

    def _record(self, h0: int, h1: int, n_appended: int, t: int) -> None:
        """Update the observation's edit history after one executor step."""
        st, ex = self._st, self._st.executor
        b = st.builder
        if h1 > self._frontier:
            b.set_decided(self._frontier, h1)
            self._frontier = h1
        if n_appended == 0:
            return
        if t == _SWAP or t == _REORDER:
            # both appended segments are unchanged raw spans that tile [h0, h1)
            self._kept_s += b.add_played(h0, h1, gain_db=0.0, effect=False, fade=False)
            return
        seg = ex.last_segment  # KEEP-like, LOOP, REPEAT_PREV append n copies of one segment
        o = seg.ops
        if o is _IDENTITY or o == _IDENTITY:
            self._kept_s += b.add_played(seg.raw_start, seg.raw_end, times=n_appended, gain_db=0.0, effect=False, fade=False)
        else:
            self._kept_s += b.add_played(
                seg.raw_start,
                seg.raw_end,
                times=n_appended,
                gain_db=o.gain_db,
                effect=o.has_effect,
                fade=o.fade_in_s > 0 or o.fade_out_s > 0,
            )

    def plan(self) -> EditPlan:
        """The plan so far (merged)."""
        return self.executor.plan()


def make_vector_env(songs, n_envs: int = 2, *, asynchronous: bool = False, copy_obs: bool = True, **env_kwargs):
    """A ``SyncVectorEnv`` or ``AsyncVectorEnv`` (subprocesses) of ``AudioEditEnv``.

    Autoreset is ``SAME_STEP``: when a sub-env's episode ends, the step returns its
    reward and ``terminated``/``truncated`` with the first observation of the next episode
    (the last one is in ``info["final_obs"]``), so every buffer row is a real transition
    (``rl.returns.monte_carlo_returns`` needs no reset rows dropped).
    Each sub-env draws its songs with its own ``np_random`` (seed with ``reset(seed=)``).
    ``copy_obs=False`` skips gymnasium's copy of the batched observation (faster; the
    arrays are then overwritten by the next step, so copy what you keep). ``env_kwargs``
    go to ``AudioEditEnv``. With ``asynchronous`` the songs (features and audio) are
    pickled to each worker once, at start.
    """
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    if n_envs < 1:
        raise ParameterError(f"n_envs must be >= 1, got {n_envs}")
    single_pair = isinstance(songs, tuple) and len(songs) == 2 and isinstance(songs[1], BeatGrid)
    songs = [songs] if single_pair or not isinstance(songs, Sequence) else list(songs)

    def thunk():
        return AudioEditEnv(songs, **env_kwargs)

    fns = [thunk] * n_envs
    if asynchronous:
        import functools
        import os

        from gymnasium.vector.async_vector_env import _async_worker

        from datasets.procs import child_call

        # gymnasium's own worker, started so that it dies with this process
        worker = functools.partial(child_call, os.getpid(), _async_worker)
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, copy=copy_obs, worker=worker)
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, copy=copy_obs)
