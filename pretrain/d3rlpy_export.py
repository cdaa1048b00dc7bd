"""Aligned episodes as a d3rlpy ``MDPDataset`` (offline RL's input), and the one place an
MDPDataset is built (``mdp_dataset``; pretrain/baselines.py's d3rlpy learners use it too).

Usage::

    python -m pretrain.d3rlpy_export --labels runs/NAME/labels --out runs/NAME/offline.h5

Each labelled pair (``runs/NAME/labels/index.json``) is one episode: its oracle actions
are replayed in ``envs.env.AudioEditEnv`` on the raw song (features from
``datasets.features.extract_features``, the pipeline's cache), so every observation is
exactly what the agent sees at that step.

- observations: float32 [N, W*F + G]: the env's ``"beats"`` window [W, F] (121 raw
  features + edit-history channels, envs.observation) flattened row-major, then
  ``"globals"`` [G]. The masks are not included: an offline learner that needs them can
  rebuild them by replaying the actions with ``envs.executor.Executor``.
- actions: int [N] flat index in [0, 450) (``envs.actions.to_flat(type, size, amount)``),
  discrete action space of size 450;
- rewards: the env's episode-end reward on the last step, 0 elsewhere (Monte Carlo);
- terminals: 1 where the read head reached the song's end; timeouts: 1 where the step
  cap ended it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from alignment.label_index import index_path, read_label_records
from datasets.atomic import atomic_path
from datasets.errors import EditorError
from datasets.safety import refuse_overwrite

__all__ = ["N_FLAT_ACTIONS", "mdp_dataset", "flatten_observation", "episode_arrays", "build_dataset", "main"]

log = logging.getLogger(__name__)

#: Flat discrete actions: every (type, size, amount) of envs.actions (18 x 5 x 5).
N_FLAT_ACTIONS = 450


def mdp_dataset(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray,
                timeouts: np.ndarray | None = None):
    """d3rlpy's MDPDataset over the flat discrete action space: rows in episode order,
    ``terminals`` / ``timeouts`` 1 at each episode's last step."""
    import d3rlpy  # heavy (imports its own torch stack); only the offline-RL paths need it

    return d3rlpy.dataset.MDPDataset(
        observations=observations,
        actions=actions,
        rewards=rewards,
        terminals=terminals,
        timeouts=timeouts,
        action_space=d3rlpy.constants.ActionSpace.DISCRETE,
        action_size=N_FLAT_ACTIONS,
    )


def flatten_observation(obs: dict) -> np.ndarray:
    """``"beats"`` [W, F] row-major then ``"globals"`` [G] -> float32 [W*F + G]."""
    return np.concatenate([obs["beats"].reshape(-1), obs["globals"]]).astype(np.float32)


def episode_arrays(song, actions, *, reward_audio: bool = False) -> dict[str, np.ndarray]:
    """Replay ``actions`` [(t, s, a), ...] on ``song`` (envs.env.Song) in the env.

    Returns observations [T, D], actions [T] (flat), rewards [T], terminals [T],
    timeouts [T]. Raises ``EditorError`` when an action is masked (labels and env
    disagree).
    """
    from envs.actions import to_flat
    from envs.env import AudioEditEnv

    env = AudioEditEnv([song], reward_audio=reward_audio)
    obs, _ = env.reset(seed=0, options={"song": 0})
    O, A, R, T, TO = [], [], [], [], []
    valid = None
    for i, (t, s, a) in enumerate(actions):
        valid = env.executor.valid_actions()
        if (int(t), int(s), int(a)) not in valid:
            raise EditorError(f"{song.name}: label action {i} {(t, s, a)} is masked in the environment")
        O.append(flatten_observation(obs))
        A.append(to_flat(int(t), int(s), int(a)))
        obs, r, term, trunc, _ = env.step(np.array([t, s, a]))
        R.append(r)
        T.append(float(term))
        TO.append(float(trunc))
        if term or trunc:
            if i != len(actions) - 1:
                log.warning("%s: episode ended after %d of %d actions", song.name, i + 1, len(actions))
            break
    if not (T and (T[-1] or TO[-1])):
        # the labels stop before the head reaches the end: the env was left mid-song
        TO[-1] = 1.0
    return {
        "observations": np.stack(O),
        "actions": np.asarray(A, dtype=np.int64),
        "rewards": np.asarray(R, dtype=np.float32),
        "terminals": np.asarray(T, dtype=np.float32),
        "timeouts": np.asarray(TO, dtype=np.float32),
    }


def build_dataset(labels_dir: str | Path, *, reward_audio: bool = False, min_confidence: float = 0.0):
    """``d3rlpy.dataset.MDPDataset`` of every labelled pair in ``labels_dir`` whose
    confidence is at least ``min_confidence``. Returns (dataset, names)."""
    from datasets.audio import load_audio
    from datasets.beats import BeatGrid
    from datasets.features import extract_features
    from envs.env import Song

    run_dir = Path(labels_dir).parent
    if not index_path(run_dir).exists():
        raise EditorError(f"{index_path(run_dir)}: no label index (run python -m alignment.run first)")
    parts: list[dict[str, np.ndarray]] = []
    names = []
    for name, _entry, rec in read_label_records(run_dir):
        if rec.get("actions") is None or rec["confidence"] < min_confidence:
            continue
        audio = load_audio(rec["raw_path"])
        # the labels' own grid: the editor's phase of the tracker's beats (alignment/grid.py)
        feats = extract_features(audio, grid=BeatGrid.from_dict(rec["plan"]["grid"]))
        song = Song.from_features(feats, audio=audio if reward_audio else None, name=name)
        parts.append(episode_arrays(song, rec["actions"], reward_audio=reward_audio))
        names.append(name)
    if not parts:
        raise EditorError(f"{labels_dir}: no labelled episode to export")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return mdp_dataset(cat["observations"], cat["actions"], cat["rewards"], cat["terminals"], cat["timeouts"]), names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.d3rlpy_export", description=__doc__.splitlines()[0])
    ap.add_argument("--labels", required=True, help="runs/NAME/labels")
    ap.add_argument("--out", required=True, help="output .h5 (d3rlpy's dump format)")
    ap.add_argument("--reward-audio", action="store_true", help="score episodes with audio terms (slower)")
    ap.add_argument("--min-confidence", type=float, default=0.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # the labels are read, never written: the dataset goes elsewhere
        refuse_overwrite([args.out], sorted(Path(args.labels).glob("*.json")))
        ds, names = build_dataset(args.labels, reward_audio=args.reward_audio, min_confidence=args.min_confidence)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    with atomic_path(out) as tmp, open(tmp, "w+b") as f:
        ds.dump(f)
    n = sum(len(ep.actions) for ep in ds.episodes)
    print(f"d3rlpy: {len(names)} episodes, {n} steps -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
