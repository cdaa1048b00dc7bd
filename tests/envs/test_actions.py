"""The factored action vocabulary: names, flat index, the meaning table and its docs,
and the 450-combination walk over real songs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from datasets.errors import ParameterError
from envs import actions as A
from envs.actions import ActionType as T
from envs.actions import Amount, Size
from envs.executor import Executor
from tests.envs._action_grids import SONGS, song_grid, waltz_grid


def test_vocabulary_sizes_and_spec_order():
    assert (A.N_TYPES, A.N_SIZES, A.N_AMOUNTS, A.N_ACTIONS) == (18, 5, 5, 450)
    assert [t.name for t in T] == [
        "KEEP", "CUT", "LOOP", "REORDER", "JUMP_BACK", "SKIP", "FADE_IN", "FADE_OUT", "GAIN",
        "DOUBLE_TIME", "HALF_TIME", "REVERSE", "EQ_LOW", "EQ_HIGH", "DISTORTION", "REVERB",
        "REPEAT_PREV", "SWAP_NEXT",
    ]  # fmt: skip
    assert [s.name for s in Size] == ["BEAT", "BAR", "TWO_BARS", "PHRASE", "TWO_PHRASES"]
    assert [a.name for a in Amount] == ["NEG_LARGE", "NEG_SMALL", "NEUTRAL", "POS_SMALL", "POS_LARGE"]
    # DESIGN.md: sizes in bars of the meter, no duplicate
    assert [A.SIZE_UNIT_BARS[s] for s in Size] == [None, 1, 2, 4, 8]


def test_flat_index_both_ways_for_all_450():
    seen = set()
    for t in range(18):
        for s in range(5):
            for a in range(5):
                i = A.to_flat(t, s, a)
                assert 0 <= i < 450
                assert A.from_flat(i) == (t, s, a)
                seen.add(i)
    assert seen == set(range(450))
    for i in range(450):
        assert A.to_flat(*A.from_flat(i)) == i
    assert isinstance(A.from_flat(7)[0], T)


@pytest.mark.parametrize("bad", [(18, 0, 0), (0, 5, 0), (0, 0, 5), (-1, 0, 0)])
def test_to_flat_rejects_out_of_range(bad):
    with pytest.raises(ParameterError):
        A.to_flat(*bad)


@pytest.mark.parametrize("bad", [-1, 450])
def test_from_flat_rejects_out_of_range(bad):
    with pytest.raises(ParameterError, match=str(bad)):
        A.from_flat(bad)


def test_meaning_table_values_follow_the_spec():
    # GAIN -3 / -1.5 / (0 masked) / +1.5 / +3 dB
    assert [A.MEANING.get((T.GAIN, a)) and A.MEANING[(T.GAIN, a)].value for a in Amount] == [-3.0, -1.5, None, 1.5, 3.0]
    # JUMP_BACK: 1 or 2 units of the size back (BAR in 4/4 from a bar line = 4 / 8 beats)
    assert A.VALID_AMOUNTS[T.JUMP_BACK] == (Amount.NEG_LARGE, Amount.NEG_SMALL)
    assert A.MEANING[(T.JUMP_BACK, Amount.NEG_LARGE)].value == 2
    assert [A.MEANING[(T.LOOP, a)].value for a in A.VALID_AMOUNTS[T.LOOP]] == [2, 3, 4]
    assert [A.MEANING[(T.EQ_LOW, a)].value for a in A.VALID_AMOUNTS[T.EQ_LOW]] == [-6.0, -3.0, 3.0, 6.0]
    fades = [A.MEANING[(T.FADE_OUT, a)].value for a in Amount]
    assert fades == sorted(fades) and fades[-1] == 1.0
    # reverb is a wet level in (0, 1], distortion a positive drive
    assert all(0 < A.MEANING[(T.REVERB, a)].value <= 1 for a in A.VALID_AMOUNTS[T.REVERB])
    assert all(A.MEANING[(T.DISTORTION, a)].value > 0 for a in A.VALID_AMOUNTS[T.DISTORTION])


def test_neutral_only_types_and_every_type_has_a_meaning():
    neutral_only = {T.KEEP, T.CUT, T.REORDER, T.DOUBLE_TIME, T.HALF_TIME, T.REVERSE, T.REPEAT_PREV, T.SWAP_NEXT}
    for t in T:
        assert A.VALID_AMOUNTS[t], t
        if t in neutral_only:
            assert A.VALID_AMOUNTS[t] == (Amount.NEUTRAL,), t
            assert A.MEANING[(t, Amount.NEUTRAL)].amount_text == "-"
        else:
            assert len(A.VALID_AMOUNTS[t]) >= 2, t
    assert A.VALID_SIZES[T.REPEAT_PREV] == (Size.BEAT,)
    # exactly one meaning per allowed (type, amount) and nothing else
    assert set(A.MEANING) == {(t, a) for t in T for a in A.VALID_AMOUNTS[t]}


def test_docs_match_the_code_table():
    assert A.DOCS_PATH.exists(), "run: python -m envs.actions --write-docs"
    text = A.DOCS_PATH.read_text()
    assert text == A.meaning_markdown(), "docs/actions.md is stale: python -m envs.actions --write-docs"
    # every allowed (type, amount) has its row
    for (t, a), m in A.MEANING.items():
        assert f"| {t.name} ({int(t)}) | {a.name} ({int(a)}) | {m.consumes} |" in text


def test_cli_prints_the_reference(capsys):
    assert A.main([]) == 0
    assert capsys.readouterr().out.strip() == A.meaning_markdown().strip()


# ---- the 450-combination walk --------------------------------------------------------
def _outcome(ex: Executor):
    return ex.head, ex.plan().segments


def _walk_all_450(ex: Executor) -> int:
    """At the executor's state, every allowed action executes and every masked one is
    impossible (raises), meaningless (does what an allowed action does) or would end
    the episode with an empty edit. Returns how many allowed actions were seen."""
    m = ex.masks()
    allowed = set(ex.valid_actions())
    outcomes = {}
    for t, s, a in allowed:
        c = ex.copy()
        r = c.step(t, s, a)
        assert r.head_before == ex.head and c.n_steps == ex.n_steps + 1
        outcomes.setdefault(_outcome(c), (t, s, a))
    assert (T.KEEP, Size.BEAT, Amount.NEUTRAL) in allowed, "KEEP BEAT is always allowed"
    for t in range(18):
        assert m.type[t] == m.size[t].any()
        for s in range(5):
            for a in range(5):
                is_allowed = bool(m.type[t] and m.size[t, s] and m.amount[t, a])
                assert is_allowed == ((t, s, a) in allowed)
                if is_allowed:
                    continue
                with pytest.raises(ParameterError):
                    ex.copy().step(t, s, a)
                c = ex.copy()
                try:
                    c._apply(t, s, a)
                except ParameterError:
                    continue  # impossible here
                if c.head >= c.n_beats and not c.n_segments:
                    continue  # an edit that keeps nothing
                assert _outcome(c) in outcomes, f"masked {A.from_flat(A.to_flat(t, s, a))} at head {ex.head} is a distinct edit"
    return len(allowed)


def _random_walk_check(grid, *, seed: int, n_states: int, **kw) -> tuple[int, int]:
    rng = random.Random(seed)
    ex = Executor(grid, **kw)
    checked = total = 0
    while checked < n_states:
        if ex.done:
            ex.reset()
        total += _walk_all_450(ex)
        checked += 1
        # bias towards moving forward so the whole song gets visited
        acts = ex.valid_actions()
        fwd = [x for x in acts if x[0] in (T.KEEP, T.CUT, T.GAIN)]
        ex.step(*rng.choice(fwd if rng.random() < 0.6 else acts))
    return checked, total


@pytest.mark.parametrize("name", SONGS)
def test_450_walk_on_real_songs(name):
    grid = song_grid(name)
    if grid is None:
        pytest.skip("real music not available (../shared/data is absent)")
    checked, total = _random_walk_check(grid, seed=1, n_states=60)
    assert checked == 60 and total > 60


def test_450_walk_on_a_three_four_grid_with_budgets():
    # small budgets so the spent-budget masks get walked too
    checked, _ = _random_walk_check(waltz_grid(), seed=2, n_states=80, jump_budget=2, loop_budget=2)
    assert checked == 80


def test_masks_are_read_only_and_amount_mask_matches_table():
    ex = Executor(waltz_grid())
    m = ex.masks()
    for arr in (m.type, m.size, m.amount):
        with pytest.raises(ValueError):
            arr[0] = not arr[0]
    assert m.type.shape == (18,) and m.size.shape == (18, 5) and m.amount.shape == (18, 5)
    for t in T:
        assert [bool(x) for x in m.amount[t]] == [a in A.VALID_AMOUNTS[t] for a in Amount]
    # at the start nothing can be jumped to or repeated
    assert not m.type[T.JUMP_BACK] and not m.type[T.REPEAT_PREV]
    assert np.array_equal(m.size[T.REPEAT_PREV], [False] * 5)
