"""DAgger for behaviour cloning: an expert that labels ANY executor state, and one
round's data ("roll out the policy, relabel what it visited": ``collect_dagger``). The
rounds themselves (collect, add to the data, train on, repeat) are the loop
``train_dagger`` in pretrain/train.py.

Why: behaviour cloning only sees the editor's own states. At test time one wrong
KEEP / CUT puts the policy in a state (history, head) no label covers, and every later
decision is made from there (bench/pretrain.py: held-out step accuracy 0.85 but plan
IoU 0.67 on `tight`). DAgger (Ross et al. 2011) adds the states the policy itself
reaches, labelled with what the editor's plan says to do from there.

The expert (``expert_action``): the target plan is a sequence of output beats (raw beat,
segment) in playing order. From a state it
1. matches what was already played against that sequence (greedy, in order, by raw
   beat): the target's progress pointer;
2. keeps the target's remaining output after the pointer, minus the beats behind the
   head that were never played and that the target plays on its way forward (the
   policy cut or skipped them: the target's decision about them is lost; going back
   for them would teach jumps no editor made). What the target itself jumps back for
   stays (`extended` plays its loudest phrase twice: JUMP_BACK + the repeat);
3. runs the oracle from the current executor state (``envs.oracle.oracle_from``) on
   that residual, and returns its first action, split
   like ``pretrain.dataset.refine_actions`` (KEEP / CUT / effects at most ``max_size``).
So on the target's own trajectory the expert gives the (refined) oracle actions, and
after a deviation the target's remaining decisions stay the target's.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np

from datasets.errors import ParameterError
from envs.env import AudioEditEnv
from envs.observation import HEAD_INDEX, WINDOW
from envs.executor import Executor
from envs.oracle import oracle_from
from envs.plan import EditPlan, Segment
from pretrain.augment import IDENTITY
from pretrain.dataset import _SPLITTABLE, BCData, _boundaries, refine_actions, song_for

__all__ = ["collect_dagger", "expert_action", "expert_rollout"]


class _Target:
    """A target plan as output beats in playing order (cached per plan object)."""

    def __init__(self, plan) -> None:
        self.plan = plan.merged()
        raw, seg = [], []
        for i, s in enumerate(self.plan.segments):
            raw.extend(range(s.raw_start, s.raw_end))
            seg.extend([i] * (s.raw_end - s.raw_start))
        self.raw = raw
        self.seg = seg
        self.where: dict[int, list[int]] = {}  # raw beat -> positions in playing order
        for q, r in enumerate(raw):
            self.where.setdefault(r, []).append(q)

    def pointer(self, played: Sequence[tuple[int, int]]) -> int:
        """Target position after the greedy in-order match of played raw spans."""
        j = 0
        for a, b in played:
            for r in range(a, b):
                pos = self.where.get(r)
                if not pos:
                    continue  # the policy played a beat the target drops
                k = bisect.bisect_left(pos, j)
                if k < len(pos):
                    j = pos[k] + 1
        return j

    def residual(self, j: int, head: int, usage: np.ndarray):
        """Segments of the target's output from position j on, without the beats behind
        the head that were never played and that the target plays on its way forward
        from j (before any jump back of its own: material it jumps back for stays)."""
        out: list[Segment] = []
        cur = None  # [seg index, start, end]
        forward = True  # no jump back in the target's own output since the pointer
        prev = self.raw[j - 1] if j > 0 else -1
        for q in range(j, len(self.raw)):
            r, i = self.raw[q], self.seg[q]
            forward = forward and r > prev
            prev = r
            if forward and r < head and usage[r] == 0:
                continue  # the target would have played it on its way forward: lost
            if cur is not None and cur[0] == i and cur[2] == r:
                cur[2] = r + 1
                continue
            if cur is not None:
                out.append(Segment(cur[1], cur[2], self.plan.segments[cur[0]].ops))
            cur = [i, r, r + 1]
        if cur is not None:
            out.append(Segment(cur[1], cur[2], self.plan.segments[cur[0]].ops))
        return tuple(out)


_TARGETS: dict[int, tuple[object, _Target]] = {}


def _target_for(plan) -> _Target:
    hit = _TARGETS.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    if len(_TARGETS) > 256:
        _TARGETS.clear()
    t = _TARGETS[id(plan)] = (plan, _Target(plan))
    return t[1]


def _continuation(ex, target: _Target) -> tuple[tuple[int, int, int], ...]:
    """The oracle's actions from executor state ``ex`` to the target's residual (the
    closest ones when a move cannot be made from here: the oracle notes it and goes on)."""
    played = [(a, b) for a, b, _ in ex.spans()]
    j = target.pointer(played)
    res = target.residual(j, ex.head, ex.beat_usage)
    plan = EditPlan(segments=res, grid=target.plan.grid, source_sha256=target.plan.source_sha256)
    return oracle_from(ex, plan).actions


def _allowed(ex, t: int, s: int, a: int) -> bool:
    m = ex.masks()
    return bool(m.type[t] and m.size[t, s] and m.amount[t, a])


_CUT, _SKIP = 1, 5


def _largest_step(ex, t: int, a: int, goal: int, max_size: int, default: int) -> int:
    """Largest allowed size <= max_size of (t, ., a) whose step does not run past goal."""
    for k in range(max_size, -1, -1):
        if _allowed(ex, t, k, a) and ex.copy().step(t, k, a).head_after <= goal:
            return k
    return default


def _refine_first(ex, act, max_size: int | None) -> tuple[int, int, int]:
    """act, or its first refined step (refine_actions: KEEP / CUT / effects split into
    the largest allowed steps of at most max_size that do not run past act's chunk)."""
    t, s, a = act
    if max_size is not None and s > max_size and t in _SPLITTABLE:
        goal = ex.copy().step(t, s, a).head_after
        s = _largest_step(ex, t, a, goal, max_size, default=s)
    return int(t), int(s), int(a)


def _mid_cut(ex, target: _Target, max_size: int | None) -> tuple[int, int, int] | None:
    """Inside a run of cuts, the label the trajectory from the run's start has here.

    The oracle restarted mid-way through a long cut can reach the same next kept beat
    with another move (a SKIP where the labels have per-bar CUTs). So replay the
    (refined) moves from where the cutting started and return the one that starts at
    the head; None when they do not land on the head (then plan from the head)."""
    start = ex.spans()[-1][1] if ex.n_segments else 0
    h = ex.head
    if not start < h or not ex.beat_cut[start:h].all():
        return None
    v = ex.copy()
    v.head = start  # same masks as when the run started: cuts change only head and counts
    for act in _continuation(v, target):
        if act[0] not in (_CUT, _SKIP):
            return None
        t, s, a = act
        goal = v.copy().step(t, s, a).head_after
        split = max_size is not None and t == _CUT and s > max_size
        while v.head < goal and not v.done:
            step = (t, _largest_step(v, t, a, goal, max_size, default=-1), a) if split else (t, s, a)
            if step[1] < 0:
                return None
            if v.head == h:
                return step
            v.step(*step)
            if not split:
                break
        if v.head > h:
            return None
    return None


def expert_action(ex, plan, *, max_size: int | None = 1) -> tuple[int, int, int]:
    """The action that best continues from executor state ``ex`` toward ``plan``.

    Parameters
    ----------
    ex : envs.executor.Executor, any state (not done) on plan's grid; not modified
    plan : envs.plan.EditPlan, the editor's (target) plan
    max_size : KEEP / CUT / effect chunks larger than this size are split into the
        largest allowed step of at most this size that does not run past the oracle's
        chunk (as ``pretrain.dataset.refine_actions``); None = the oracle's chunk

    Returns (type, size, amount), always allowed by ``ex.masks()``.
    Raises ParameterError when the episode is over.
    """
    if ex.done:
        raise ParameterError("expert_action: the episode is over")
    target = _target_for(plan)
    act = _mid_cut(ex, target, max_size)
    if act is not None and _allowed(ex, *act):
        return act
    acts = _continuation(ex, target)
    if acts:
        act = _refine_first(ex, acts[0], max_size)
        if _allowed(ex, *act):
            return act
    # nothing of the target left to play and nothing to cut to (an edit must keep
    # something): keep the smallest chunk; else the first allowed action
    m = ex.masks()
    sizes = np.flatnonzero(m.size[0]) if m.type[0] else []
    t, s, a = (0, int(sizes[0]), 2) if len(sizes) else ex.valid_actions()[0]
    return int(t), int(s), int(a)


def expert_rollout(ex, plan, *, max_size: int | None = 1) -> list[tuple[int, int, int]]:
    """Follow the expert from state ``ex`` (modified in place) to the episode's end."""
    out = []
    while not ex.done:
        act = expert_action(ex, plan, max_size=max_size)
        ex.step(*act)
        out.append(act)
    return out


def _state_key(ex) -> tuple:
    return (ex.head, ex.spans())


def _flipped(ex, label: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The opposite unit decision: KEEP -> CUT (same size when allowed), CUT / SKIP ->
    KEEP a bar (a beat when a bar is not allowed); None for other types."""
    m = ex.masks()
    t, s, _ = label
    if t == 0:
        new_t = _CUT
    elif t in (_CUT, _SKIP):
        new_t, s = 0, 1
    else:
        return None
    if not m.type[new_t]:
        return None
    sizes = np.flatnonzero(m.size[new_t])
    s = s if m.size[new_t, s] else int(sizes[np.argmin(np.abs(sizes - s))])
    return new_t, int(s), 2


def collect_dagger(act: Callable[[dict], np.ndarray], pairs, songs: dict, *, target_keep: float,
                   refine_max_size: int | None = 1, skip_label_states: bool = True, flip_prob: float = 0.0,
                   n_rollouts: int = 1, seed: int = 0, stems: str = "auto"):
    """Roll ``act`` out on every pair's song and label each visited state with the expert.

    act : ``act(obs) -> (t, s, a)`` for one env observation (pretrain.evaluate.policy_fn)
    pairs : LabeledPair list (their ``plan`` is the target)
    songs : {(pair.name, IDENTITY.key()): envs.env.Song}; a missing song is built with
        ``pretrain.dataset.song_for``
    skip_label_states : leave out states of the pair's own (refined) label trajectory:
        the BC data already holds them
    flip_prob : probability that a step executes the opposite of the expert's unit
        decision (KEEP <-> CUT) instead of the policy's action: noise injection (DART,
        Laskey et al. 2017). A policy that has memorised its training songs rarely leaves
        their label trajectories, while on new songs it makes exactly such unit mistakes;
        the flips put it in those states, and the labels teach what to do after one.
    n_rollouts : rollouts per song (they differ only through the flips)
    stems : stem method of a song built here: the one the behaviour-cloning data used

    Returns a BCData (same arrays as ``build_bc_data``) or None when the policy stayed
    on every label trajectory.
    """
    if not 0.0 <= flip_prob < 1.0 or n_rollouts < 1:
        raise ParameterError(f"flip_prob={flip_prob} must be in [0, 1) and n_rollouts={n_rollouts} >= 1")
    rng = np.random.default_rng(seed)
    parts = []
    for pair in [p for p in pairs for _ in range(n_rollouts)]:
        song = (songs or {}).get((pair.name, IDENTITY.key())) or song_for(pair, stems=stems)
        env = AudioEditEnv([song], score_episodes=False, reward_audio=False, target_keep=target_keep)
        plan = pair.plan
        seen = set()
        if skip_label_states:
            labels = pair.actions if refine_max_size is None else refine_actions(plan, pair.actions, max_size=refine_max_size)
            lx = Executor(plan.grid, source_sha256=plan.source_sha256, max_steps=env.max_steps, jump_budget=env.jump_budget,
                          loop_budget=env.loop_budget)
            for t, s, a in labels:
                if lx.done:
                    break
                seen.add(_state_key(lx))
                lx.step(t, s, a)
        n = plan.grid.n_beats
        bound_pad = np.zeros(n + WINDOW, dtype=np.uint8)
        bound_pad[HEAD_INDEX : HEAD_INDEX + n] = _boundaries(plan)
        rows: dict[str, list] = {k: [] for k in ("beats", "beat_mask", "globals", "type_mask", "size_mask", "amount_mask",
                                                  "actions", "boundary", "weight", "step")}
        obs, _ = env.reset(options={"song": 0})
        done, i = False, 0
        while not done:
            ex = env.executor
            label = None
            if _state_key(ex) not in seen:
                label = expert_action(ex, plan, max_size=refine_max_size)
                for k in ("beats", "beat_mask", "globals", "type_mask", "size_mask", "amount_mask"):
                    rows[k].append(obs[k])
                rows["actions"].append(label)
                h = min(max(int(ex.head), 0), n)
                rows["boundary"].append(bound_pad[h : h + WINDOW])
                rows["weight"].append(1.0)
                rows["step"].append(i)
            a = np.asarray(act(obs)).reshape(-1)[:3]
            if flip_prob > 0 and rng.random() < flip_prob:
                flip = _flipped(ex, label if label is not None else expert_action(ex, plan, max_size=refine_max_size))
                a = np.asarray(flip) if flip is not None else a
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
            i += 1
        if not rows["actions"]:
            continue
        dtypes = {"beats": np.float32, "beat_mask": np.float32, "globals": np.float32, "type_mask": np.int8,
                  "size_mask": np.int8, "amount_mask": np.int8, "actions": np.int64, "boundary": np.uint8,
                  "weight": np.float32, "step": np.int32}
        arr = {k: np.asarray(v, dtype=dtypes[k]) for k, v in rows.items()}
        m = len(arr["actions"])
        parts.append(BCData(**arr, song=np.zeros(m, dtype=np.int32), episode=np.zeros(m, dtype=np.int32),
                            song_keys=(pair.raw_sha256 or pair.name,), episode_names=(f"{song.name}#dagger",)))
    return BCData.concat(parts) if parts else None
