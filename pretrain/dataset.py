"""The behaviour-cloning dataset: aligned labels replayed in the environment.

Each labelled pair (runs/RUN/labels/index.json -> NAME.json: "actions" [[t, s, a], ...],
"plan", "raw_path", "raw_beat_confidence") is replayed action by action in
``envs.env.AudioEditEnv``; every observation the env returns before a step is one
sample, with that step's label. So the states (edit history included) are exactly the
ones the policy sees when it acts, in pretraining, fine-tuning and inference.

A sample also carries
- ``boundary`` [W]: 1 on window beats where the labelled plan starts or ends a segment
  (where the editor cuts or joins); target of the auxiliary boundary head. The grid's
  phrase starts are already an input channel (envs/observation.py ``is_phrase_start``),
  so predicting those would teach nothing; the editor's own section boundaries are the
  phrase-level structure worth detecting.
- ``weight``: the label's confidence at the head beat (alignment's ``raw_beat_confidence``).
- ``song``: index of the song in ``song_keys`` (the raw's sha256): the unit of the
  train/validation split, shared by every augmentation of a pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from alignment.label_index import index_path, read_label_records
from datasets.errors import EditorError, ParameterError
from pretrain.augment import IDENTITY, Augmentation, augment_audio

__all__ = ["LabeledPair", "BCData", "load_labels", "default_target_keep", "replay_episode", "refine_actions", "build_bc_data", "split_by_song", "song_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabeledPair:
    """One aligned pair's labels (from runs/RUN/labels/NAME.json)."""

    name: str
    raw_path: str
    raw_sha256: str
    actions: tuple[tuple[int, int, int], ...]
    plan: object  # envs.plan.EditPlan
    confidence: np.ndarray | None  # [n_beats] label confidence per raw beat
    plan_prior: np.ndarray | None = None  # [n_beats, 4] the planner's out-of-fold plan (agent/planner.py)


def load_labels(run_dir: str | Path) -> list[LabeledPair]:
    """Every labelled pair of a run with usable actions, sorted by name.

    Raises ParameterError when runs/RUN/labels/index.json is missing or lists nothing.
    """
    from envs.plan import EditPlan

    out = []
    for name, _entry, rec in read_label_records(run_dir):
        if not rec.get("actions"):
            log.warning("%s: no oracle actions in its label record; pair skipped", name)
            continue
        plan = EditPlan.from_dict(rec["plan"])
        conf = rec.get("raw_beat_confidence")
        out.append(
            LabeledPair(
                name=name,
                raw_path=str(rec["raw_path"]),
                raw_sha256=str(rec.get("raw_sha256", plan.source_sha256)),
                actions=tuple((int(t), int(s), int(a)) for t, s, a in rec["actions"]),
                plan=plan,
                confidence=None if conf is None else np.asarray(conf, dtype=np.float32),
            )
        )
    if not out:
        raise ParameterError(f"{index_path(run_dir)}: no pair has oracle actions")
    return out


@dataclass(frozen=True)
class BCData:
    """Samples as parallel numpy arrays (N samples, window W)."""

    beats: np.ndarray  # (N, W, F) float32, raw features + history (as the env gives them)
    beat_mask: np.ndarray  # (N, W) float32
    globals: np.ndarray  # (N, G) float32
    type_mask: np.ndarray  # (N, 18) int8
    size_mask: np.ndarray  # (N, 18, 5) int8
    amount_mask: np.ndarray  # (N, 18, 5) int8
    actions: np.ndarray  # (N, 3) int64 labels (type, size, amount)
    boundary: np.ndarray  # (N, W) uint8 auxiliary target
    weight: np.ndarray  # (N,) float32 label confidence
    song: np.ndarray  # (N,) int32 index into song_keys
    episode: np.ndarray  # (N,) int32 index into episode_names
    step: np.ndarray  # (N,) int32 step number inside the episode
    song_keys: tuple[str, ...] = ()
    episode_names: tuple[str, ...] = ()

    _ARRAYS = (
        "beats", "beat_mask", "globals", "type_mask", "size_mask", "amount_mask",
        "actions", "boundary", "weight", "song", "episode", "step",
    )

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def subset(self, idx) -> "BCData":
        idx = np.asarray(idx)
        return BCData(**{k: getattr(self, k)[idx] for k in self._ARRAYS}, song_keys=self.song_keys, episode_names=self.episode_names)

    def obs(self, idx=None, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Batched observation tensors (the model's input) for rows idx (all if None)."""
        sl = slice(None) if idx is None else np.asarray(idx)
        return {
            "beats": torch.as_tensor(self.beats[sl], device=device),
            "beat_mask": torch.as_tensor(self.beat_mask[sl], device=device) > 0.5,
            "globals": torch.as_tensor(self.globals[sl], device=device),
            "type_mask": torch.as_tensor(self.type_mask[sl], device=device).bool(),
            "size_mask": torch.as_tensor(self.size_mask[sl], device=device).bool(),
            "amount_mask": torch.as_tensor(self.amount_mask[sl], device=device).bool(),
        }

    @staticmethod
    def concat(parts: Sequence["BCData"]) -> "BCData":
        """Concatenate datasets, re-indexing songs and episodes by key / name."""
        if not parts:
            raise ParameterError("BCData.concat: nothing to concatenate")
        keys: list[str] = []
        names: list[str] = []
        arrays = {k: [] for k in BCData._ARRAYS}
        for p in parts:
            song_map = np.array([_index_of(keys, k) for k in p.song_keys] or [0], dtype=np.int32)
            ep_map = np.array([_index_of(names, n) for n in p.episode_names] or [0], dtype=np.int32)
            for k in BCData._ARRAYS:
                v = getattr(p, k)
                if k == "song":
                    v = song_map[v]
                elif k == "episode":
                    v = ep_map[v]
                arrays[k].append(v)
        return BCData(**{k: np.concatenate(v) for k, v in arrays.items()}, song_keys=tuple(keys), episode_names=tuple(names))


def _index_of(lst: list[str], key: str) -> int:
    if key not in lst:
        lst.append(key)
    return lst.index(key)


def song_for(pair: LabeledPair, aug: Augmentation = IDENTITY, *, stems: str = "auto"):
    """The env's Song for a pair's raw (augmented), features from the cached pipeline,
    computed on the label's own grid so the plan applies unchanged."""
    from datasets.audio import load_audio
    from datasets.features import extract_features
    from envs.env import Song

    audio = augment_audio(load_audio(pair.raw_path), aug)
    feats = extract_features(audio, grid=pair.plan.grid, stems=stems)
    name = pair.name if aug.is_identity else f"{pair.name}#{aug.key()}"
    return Song.from_features(feats, audio=None, human_plan=pair.plan, name=name, plan_prior=pair.plan_prior)


# Types whose action on a chunk equals the same action on its parts, one after the other
# (same ops on contiguous spans merge; CUT drops each part). Not FADE_* (one fade per
# segment), REVERSE (a reversed whole is not the parts reversed), LOOP, SKIP, jumps,
# repeats and swaps (their meaning depends on the chunk as a whole).
_SPLITTABLE = frozenset((0, 1, 8, 12, 13, 14, 15))  # KEEP, CUT, GAIN, EQ_LOW, EQ_HIGH, DISTORTION, REVERB


def refine_actions(plan, actions: Sequence[Sequence[int]], *, max_size: int = 3, **executor_kw) -> tuple[tuple[int, int, int], ...]:
    """An equivalent action sequence whose KEEP / CUT / effect chunks are at most
    ``max_size`` (default PHRASE): the oracle's greedy largest chunks ("KEEP TWO_PHRASES")
    become one decision per phrase ("KEEP PHRASE", "KEEP PHRASE").

    Why: a decision about one phrase depends on that phrase, which the window sees; a
    decision about the next 32 beats depends on material at the window's far edge. Finer
    labels are also more samples per song. The result executes to the same merged plan
    (checked; on any difference the original actions are returned).
    """
    from envs.executor import Executor

    grid = plan.grid
    ex = Executor(grid, source_sha256=plan.source_sha256, **executor_kw)
    out: list[tuple[int, int, int]] = []
    for t, s, a in actions:
        t, s, a = int(t), int(s), int(a)
        if s > max_size and t in _SPLITTABLE:
            probe = ex.copy()
            target = probe.step(t, s, a).head_after
            trial, parts = ex.copy(), []
            while trial.head < target and not trial.done:
                m = trial.masks()
                sizes = [k for k in range(max_size, -1, -1) if m.type[t] and m.size[t, k] and m.amount[t, a]]
                # the largest allowed size <= max_size that does not run past the target
                step = None
                for k in sizes:
                    c = trial.copy()
                    if c.step(t, k, a).head_after <= target:
                        step = k
                        break
                if step is None:
                    break
                trial.step(t, step, a)
                parts.append((t, step, a))
            if trial.head == target and parts:
                out.extend(parts)
                ex = trial
                continue
        ex.step(t, s, a)
        out.append((t, s, a))
    return tuple(out) if _same(grid, plan, actions, out, executor_kw) else tuple(tuple(map(int, x)) for x in actions)


def _same(grid, plan, a1, a2, kw) -> bool:
    from envs.executor import execute

    try:
        return execute(grid, a1, source_sha256=plan.source_sha256, **kw) == execute(grid, a2, source_sha256=plan.source_sha256, **kw)
    except ParameterError:
        return False


def _boundaries(plan) -> np.ndarray:
    """[n_beats] uint8: 1 where a merged segment of the plan starts or ends."""
    n = plan.grid.n_beats
    b = np.zeros(n + 1, dtype=np.uint8)
    for seg in plan.merged().segments:
        b[seg.raw_start] = 1
        b[seg.raw_end] = 1
    b[0] = b[n] = 0  # the song's own ends are not edits
    return b[:n]


def replay_episode(env, song_index: int, actions: Sequence[Sequence[int]], *, plan=None, confidence=None) -> tuple[dict, bool]:
    """Replay labelled actions in ``env`` (an AudioEditEnv) and collect the samples.

    Returns (arrays of one episode as for BCData without song/episode, exact) where
    ``exact`` says the env's final plan has the segments of ``plan.merged()`` (when plan
    is given).
    Raises EditorError when a label is masked in the state it is applied to.
    """
    from envs.observation import HEAD_INDEX, WINDOW

    obs, _ = env.reset(options={"song": song_index})
    n_beats = env.executor.n_beats
    bound = _boundaries(plan) if plan is not None else np.zeros(n_beats, dtype=np.uint8)
    bound_pad = np.zeros(n_beats + WINDOW, dtype=np.uint8)
    bound_pad[HEAD_INDEX : HEAD_INDEX + n_beats] = bound
    rows: dict[str, list] = {k: [] for k in ("beats", "beat_mask", "globals", "type_mask", "size_mask", "amount_mask", "actions", "boundary", "weight", "step")}
    done = False
    for i, (t, s, a) in enumerate(actions):
        if done:
            raise EditorError(f"{env.song.name}: label has {len(actions)} actions but the episode ended after {i}")
        if not (obs["type_mask"][t] and obs["size_mask"][t, s] and obs["amount_mask"][t, a]):
            raise EditorError(f"{env.song.name}: label step {i} ({t}, {s}, {a}) is masked in the replayed state")
        head = int(env.executor.head)
        for k in ("beats", "beat_mask", "globals", "type_mask", "size_mask", "amount_mask"):
            rows[k].append(obs[k])
        rows["actions"].append((t, s, a))
        h = min(max(head, 0), n_beats)
        rows["boundary"].append(bound_pad[h : h + WINDOW])
        rows["weight"].append(1.0 if confidence is None or head >= len(confidence) else float(confidence[head]))
        rows["step"].append(i)
        obs, _, term, trunc, _ = env.step(np.array([t, s, a]))
        done = term or trunc
    # segments only: an augmented song carries its own audio hash, the label the raw's
    exact = plan is None or (done and env.plan().segments == plan.merged().segments)
    dtypes = dict(beats=np.float32, beat_mask=np.float32, globals=np.float32, type_mask=np.int8, size_mask=np.int8,
                  amount_mask=np.int8, actions=np.int64, boundary=np.uint8, weight=np.float32, step=np.int32)
    return {k: np.asarray(v, dtype=dtypes[k]) for k, v in rows.items()}, bool(exact)


def default_target_keep(pairs: Sequence[LabeledPair]) -> float:
    """The keep ratio the env is told to aim at for these pairs (``envs.reward.target_keep_from``
    of their keep ratios): what fine-tuning and inference set for the run."""
    from envs.reward import target_keep_from

    return target_keep_from([p.plan.keep_ratio for p in pairs])


def build_bc_data(pairs: Sequence[LabeledPair], *, augmentations: Sequence[Augmentation] = (IDENTITY,),
                  songs: dict | None = None, stems: str = "auto", target_keep: float | None = None,
                  refine_max_size: int | None = 3) -> BCData:
    """Replay every pair (x every augmentation) in the env and stack the samples.

    songs : optional {(pair.name, aug.key()): envs.env.Song} to skip feature extraction
        (tests, benchmarks that already hold features).
    target_keep : the env's target keep ratio (a global of the observation); None =
        ``default_target_keep(pairs)``. Use the same value at inference.
    refine_max_size : split KEEP / CUT / effect chunks larger than this size into
        equivalent smaller steps (``refine_actions``; 3 = PHRASE); None keeps the
        oracle's actions as they are.
    Pairs whose replay fails are skipped with a warning; none left raises EditorError.
    """
    from envs.env import AudioEditEnv

    target_keep = default_target_keep(pairs) if target_keep is None else float(target_keep)
    parts = []
    for pair in pairs:
        actions = pair.actions if refine_max_size is None else refine_actions(pair.plan, pair.actions, max_size=refine_max_size)
        for aug in augmentations:
            song = (songs or {}).get((pair.name, aug.key())) or song_for(pair, aug, stems=stems)
            env = AudioEditEnv([song], score_episodes=False, reward_audio=False, target_keep=target_keep)
            try:
                arr, exact = replay_episode(env, 0, actions, plan=pair.plan, confidence=pair.confidence)
            except EditorError as exc:
                log.warning("pair %s (%s) skipped: %s", pair.name, aug.key(), exc)
                continue
            if not exact:
                log.warning("pair %s (%s): replayed plan differs from the label plan", pair.name, aug.key())
            n = len(arr["actions"])
            parts.append(
                BCData(
                    **arr,
                    song=np.zeros(n, dtype=np.int32),
                    episode=np.zeros(n, dtype=np.int32),
                    song_keys=(pair.raw_sha256 or pair.name,),
                    episode_names=(song.name,),
                )
            )
    if not parts:
        raise EditorError("no labelled pair could be replayed in the environment")
    return BCData.concat(parts)


def split_by_song(data: BCData, *, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): whole songs (every augmentation of a raw) go to one
    side. With one song only, validation is empty."""
    n_songs = len(data.song_keys)
    if not 0.0 <= val_fraction < 1.0:
        raise ParameterError(f"val_fraction={val_fraction} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_songs)
    n_val = int(round(val_fraction * n_songs)) if n_songs > 1 else 0
    if val_fraction > 0 and n_songs > 1:
        n_val = max(1, min(n_val, n_songs - 1))
    val_songs = set(order[:n_val].tolist())
    is_val = np.isin(data.song, list(val_songs))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
