"""Scripted policies for the environment: references for tests, benchmarks and RL logs.

- ``random_action``: uniform over the valid types, then the valid sizes and amounts of
  that type (what an untrained 3-head policy with masks does).
- ``keep_all_action`` / ``cut_all_action``: the two degenerate edits the reward must
  punish. The executor never lets an edit cut everything (CUT to the end is masked while
  nothing is kept), so "cut all" cuts whenever it may and keeps one beat when forced.
- ``phrase_energy_actions``: a sensible, persona-like edit: keep the loudest whole
  phrases up to the target keep ratio, cut the rest on phrase lines, fade in the first
  kept phrase and out of the last, and play the loudest phrase twice (a chorus repeat).
"""

from __future__ import annotations

import numpy as np

from envs.actions import ActionType, Amount, Size
from envs.executor import Masks

__all__ = ["random_action", "keep_all_action", "cut_all_action", "largest_size", "phrase_energy_actions", "PhraseEnergyPolicy", "run_episode"]

_T = ActionType
_NEUTRAL = int(Amount.NEUTRAL)


def random_action(masks: Masks, rng: np.random.Generator) -> tuple[int, int, int]:
    """Uniform valid type, then uniform valid size and amount given it."""
    t = int(rng.choice(np.flatnonzero(masks.type)))
    s = int(rng.choice(np.flatnonzero(masks.size[t])))
    a = int(rng.choice(np.flatnonzero(masks.amount[t])))
    return t, s, a


def largest_size(masks: Masks, t: int, at_most: int = int(Size.TWO_PHRASES)) -> int:
    """Largest valid size <= ``at_most`` for type t (masked sizes duplicate smaller ones,
    so this is the chunk of size ``at_most`` under the name the executor accepts)."""
    ok = np.flatnonzero(masks.size[t, : at_most + 1])
    return int(ok[-1])


def keep_all_action(masks: Masks) -> tuple[int, int, int]:
    return int(_T.KEEP), largest_size(masks, _T.KEEP), _NEUTRAL


def cut_all_action(masks: Masks) -> tuple[int, int, int]:
    if masks.type[_T.CUT]:
        return int(_T.CUT), largest_size(masks, _T.CUT), _NEUTRAL
    return int(_T.KEEP), int(Size.BEAT), _NEUTRAL


def phrase_energy_actions(env, *, target_keep: float | None = None) -> list[tuple[int, int, int]]:
    """Actions of the sensible phrase-level edit of ``env``'s current song (see module
    docstring), computed by stepping a copy of the env's executor from its reset state."""
    from datasets.features import feature_index

    song = env.song
    grid = song.grid
    target = env.target_keep if target_keep is None else target_keep
    phrase = grid.phrase
    n_ph = int(phrase.max()) + 1
    rms = song.values[:, feature_index("rms_db")]
    widths = np.diff(grid.bounds)
    energy = np.array([rms[phrase == p].mean() for p in range(n_ph)])
    dur = np.array([widths[phrase == p].sum() for p in range(n_ph)])
    keep = np.zeros(n_ph, dtype=bool)
    for p in np.argsort(-energy, kind="stable"):
        if dur[keep].sum() >= target * grid.duration:
            break
        keep[p] = True
    kept = np.flatnonzero(keep)
    loudest = int(np.argmax(np.where(keep, energy, -np.inf)))
    ex = env.executor.copy().reset()
    actions = []
    looped = False
    while not ex.done:
        m = ex.masks()
        p = int(phrase[ex.head])
        if keep[p]:
            if p == kept[0] and ex.n_segments == 0:
                t = _T.FADE_IN
            elif p == kept[-1]:
                t = _T.FADE_OUT
            elif p == loudest and not looped and m.type[_T.LOOP]:
                t, looped = _T.LOOP, True
            else:
                t = _T.KEEP
        else:
            t = _T.CUT if m.type[_T.CUT] else _T.KEEP
        s = largest_size(m, int(t), int(Size.PHRASE))
        a = _NEUTRAL if m.amount[t, _NEUTRAL] else int(np.flatnonzero(m.amount[t])[0])
        actions.append((int(t), s, a))
        ex.step(int(t), s, a)
    return actions


class PhraseEnergyPolicy:
    """``phrase_energy_actions`` as a policy ``(env) -> action`` (plans at each episode start)."""

    def __init__(self, *, target_keep: float | None = None) -> None:
        self.target_keep = target_keep
        self._actions: list[tuple[int, int, int]] = []

    def __call__(self, env) -> tuple[int, int, int]:
        k = env.executor.n_steps
        if k == 0:
            self._actions = phrase_energy_actions(env, target_keep=self.target_keep)
        return self._actions[k]


def run_episode(env, policy, *, seed: int | None = None, song: int | None = None) -> tuple[float, dict, int]:
    """Reset ``env`` and run ``policy(env) -> (type, size, amount)`` to the episode's end.

    Returns (episode return, last step's info, steps).
    """
    env.reset(seed=seed, options=None if song is None else {"song": song})
    total, steps = 0.0, 0
    while True:
        _, r, term, trunc, info = env.step(policy(env))
        total += r
        steps += 1
        if term or trunc:
            return total, info, steps
