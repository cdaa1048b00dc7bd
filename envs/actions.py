"""The factored action vocabulary: 18 types x 5 sizes x 5 amounts = 450 actions.

The policy has three heads (SPEC.md): type [18], size [5] given the type, amount [5]
given the type. This module names them, maps them to one flat index and back, and holds
the one table (``MEANING``) that says what every (type, amount) does. The executor in
``envs/executor.py`` implements exactly this table, and ``docs/actions.md`` is generated
from it (``python -m envs.actions --write-docs``; a test checks they agree).

Sizes: the chunk
----------------
A size names a musical unit of the detected meter (DESIGN.md: the spec's sizes had two
8-beat entries, so we count in bars): BEAT = 1 beat, BAR = 1 bar, TWO_BARS = 2 bars,
PHRASE = 4 bars, TWO_PHRASES = 8 bars. Units are *aligned to the grid*: a unit is a run
of beats with the same ``grid.bar`` (BAR), ``grid.bar // 2`` (TWO_BARS),
``grid.bar // 4`` (PHRASE, the grid's own ``phrase``) or ``grid.bar // 8``
(TWO_PHRASES), except that a leading pickup or a last piece shorter than one bar
joins its neighbouring unit (``BeatGrid.unit_ids``). The **chunk** of size s at read head h is ``[h, e)`` where e is the end
of the unit that contains h, clipped to the song's end. So a size never runs past the
end (the last, partial unit stays reachable) and an edit made of chunks always cuts on
the bar lines of the grid: KEEP BAR in the middle of a bar keeps the rest of the bar,
and the next KEEP BAR keeps a whole bar. We chose aligned units over fixed beat counts
because editors cut on bar and phrase lines; a fixed count would drift off them after a
single BEAT action or a pickup bar.
Sizes whose chunk equals a smaller size's chunk at the current head are masked (one
name per distinct edit, so behaviour-cloning labels are unambiguous).

Amounts
-------
Amounts are ordinal: NEG_LARGE < NEG_SMALL < NEUTRAL < POS_SMALL < POS_LARGE. Each type
gives them its own meaning (``MEANING``); an amount a type does not use is masked. For
types where the amount means nothing (KEEP, CUT, ...) only NEUTRAL is allowed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from datasets.atomic import atomic_write_text
from datasets.errors import EditorError, ParameterError

__all__ = [
    "ActionType",
    "Size",
    "Amount",
    "N_TYPES",
    "N_SIZES",
    "N_AMOUNTS",
    "N_ACTIONS",
    "to_flat",
    "from_flat",
    "Meaning",
    "MEANING",
    "VALID_AMOUNTS",
    "VALID_SIZES",
    "SIZE_UNIT_BARS",
    "LOOP_COUNT",
    "SKIP_CHUNKS",
    "JUMP_UNITS",
    "FADE_FRACTION",
    "GAIN_DB",
    "EQ_DB",
    "DISTORTION_DB",
    "REVERB_WET",
    "TIME_FACTOR",
    "KEEP_LIKE",
    "default_max_steps",
    "default_jump_budget",
    "meaning_markdown",
    "DOCS_PATH",
    "main",
]


class ActionType(IntEnum):
    """What to do with the chunk at the read head (order fixed by SPEC.md)."""

    KEEP = 0
    CUT = 1
    LOOP = 2
    REORDER = 3
    JUMP_BACK = 4
    SKIP = 5
    FADE_IN = 6
    FADE_OUT = 7
    GAIN = 8
    DOUBLE_TIME = 9
    HALF_TIME = 10
    REVERSE = 11
    EQ_LOW = 12
    EQ_HIGH = 13
    DISTORTION = 14
    REVERB = 15
    REPEAT_PREV = 16
    SWAP_NEXT = 17


class Size(IntEnum):
    """How much: a grid-aligned unit of the meter (see the module docstring)."""

    BEAT = 0
    BAR = 1
    TWO_BARS = 2
    PHRASE = 3
    TWO_PHRASES = 4


class Amount(IntEnum):
    """Intensity / direction, ordinal; each type defines its values in ``MEANING``."""

    NEG_LARGE = 0
    NEG_SMALL = 1
    NEUTRAL = 2
    POS_SMALL = 3
    POS_LARGE = 4


N_TYPES = len(ActionType)
N_SIZES = len(Size)
N_AMOUNTS = len(Amount)
N_ACTIONS = N_TYPES * N_SIZES * N_AMOUNTS  # 450

#: Bars per unit for BAR.. sizes; BEAT is the beat itself (None).
SIZE_UNIT_BARS: dict[Size, int | None] = {
    Size.BEAT: None,
    Size.BAR: 1,
    Size.TWO_BARS: 2,
    Size.PHRASE: 4,  # datasets.beats.BARS_PER_PHRASE
    Size.TWO_PHRASES: 8,
}


def to_flat(t: int, s: int, a: int) -> int:
    """Flat index in [0, 450) of (type, size, amount): ``(t * 5 + s) * 5 + a``."""
    if not (0 <= t < N_TYPES and 0 <= s < N_SIZES and 0 <= a < N_AMOUNTS):
        raise ParameterError(f"action ({t}, {s}, {a}) outside 18 types x 5 sizes x 5 amounts")
    return (int(t) * N_SIZES + int(s)) * N_AMOUNTS + int(a)


def from_flat(i: int) -> tuple[ActionType, Size, Amount]:
    """(type, size, amount) of a flat index in [0, 450)."""
    if not 0 <= i < N_ACTIONS:
        raise ParameterError(f"flat action index {i} outside [0, {N_ACTIONS})")
    ts, a = divmod(int(i), N_AMOUNTS)
    t, s = divmod(ts, N_SIZES)
    return ActionType(t), Size(s), Amount(a)


# ---- the numbers behind the amounts (the executor reads these, the docs print them) ----
_A = Amount
#: LOOP: how many times the chunk is played in total (x2 = the chunk and one repeat).
LOOP_COUNT = {_A.NEUTRAL: 2, _A.POS_SMALL: 3, _A.POS_LARGE: 4}
#: SKIP: how many consecutive chunks of the size are dropped (1 chunk is CUT).
SKIP_CHUNKS = {_A.NEUTRAL: 2, _A.POS_SMALL: 3, _A.POS_LARGE: 4}
#: JUMP_BACK: how many units of the size the head goes back (in 4/4 from a bar line,
#: BAR gives the spec's "back 4 / back 8 beats").
JUMP_UNITS = {_A.NEG_SMALL: 1, _A.NEG_LARGE: 2}
#: FADE_IN / FADE_OUT: fade length as a fraction of the chunk's duration (1 = the whole
#: chunk, the usual intro/outro fade; 1/8 of a beat-chunk is a ~60 ms de-click fade).
FADE_FRACTION = {_A.NEG_LARGE: 0.125, _A.NEG_SMALL: 0.25, _A.NEUTRAL: 0.5, _A.POS_SMALL: 0.75, _A.POS_LARGE: 1.0}
#: GAIN in dB (SPEC.md: -3 dB .. +3 dB); 0 dB is KEEP, so NEUTRAL is masked.
GAIN_DB = {_A.NEG_LARGE: -3.0, _A.NEG_SMALL: -1.5, _A.POS_SMALL: 1.5, _A.POS_LARGE: 3.0}
#: EQ_LOW / EQ_HIGH shelf gain in dB; 0 dB is KEEP, so NEUTRAL is masked.
EQ_DB = {_A.NEG_LARGE: -6.0, _A.NEG_SMALL: -3.0, _A.POS_SMALL: 3.0, _A.POS_LARGE: 6.0}
#: DISTORTION drive in dB (pedalboard.Distortion's drive_db; its default is 25 dB).
#: Distortion has no direction: only the positive amounts (light, heavy) exist.
DISTORTION_DB = {_A.POS_SMALL: 10.0, _A.POS_LARGE: 25.0}
#: REVERB wet level in [0, 1]; light and heavy.
REVERB_WET = {_A.POS_SMALL: 0.2, _A.POS_LARGE: 0.5}
#: DOUBLE_TIME / HALF_TIME playback speed (pitch preserved).
TIME_FACTOR = {ActionType.DOUBLE_TIME: 2.0, ActionType.HALF_TIME: 0.5}

def default_max_steps(n_beats: int) -> int:
    """Step cap of an episode: JUMP_BACK and REPEAT_PREV do not advance the head, so an
    episode needs a cap; 4 steps per beat is far above any useful edit (an edit that
    keeps everything in single beats takes n_beats steps)."""
    return max(16, 4 * n_beats)


def default_jump_budget(n_beats: int) -> int:
    """JUMP_BACKs per episode: one per 8 beats (two bars in 4/4), at least 16."""
    return max(16, n_beats // 8)


#: Types that consume one chunk and append it once with a treatment (``Ops``).
KEEP_LIKE = frozenset(
    {
        ActionType.KEEP,
        ActionType.FADE_IN,
        ActionType.FADE_OUT,
        ActionType.GAIN,
        ActionType.DOUBLE_TIME,
        ActionType.HALF_TIME,
        ActionType.REVERSE,
        ActionType.EQ_LOW,
        ActionType.EQ_HIGH,
        ActionType.DISTORTION,
        ActionType.REVERB,
    }
)


@dataclass(frozen=True)
class Meaning:
    """What one (type, amount) does; n is the chunk length in raw beats at the head.

    consumes : how the read head moves, in raw beats (text)
    appends : what is appended to the plan (text)
    amount_text : what the amount means (text; "-" for NEUTRAL-only types)
    value : the amount's number (dB, count, fraction, units), None when it has none
    """

    type: ActionType
    amount: Amount
    consumes: str
    appends: str
    amount_text: str
    value: float | None


def _build_meaning() -> dict[tuple[ActionType, Amount], Meaning]:
    T = ActionType
    chunk = "the chunk [h, h+n)"
    m: dict[tuple[ActionType, Amount], Meaning] = {}

    def add(t, a, consumes, appends, amount_text="-", value=None):
        m[(t, a)] = Meaning(t, a, consumes, appends, amount_text, value)

    add(T.KEEP, _A.NEUTRAL, "n", f"{chunk}, unchanged")
    add(T.CUT, _A.NEUTRAL, "n", "nothing")
    for a, k in LOOP_COUNT.items():
        add(T.LOOP, a, "n", f"{chunk} {k} times in a row, unchanged", f"played {k} times", k)
    add(
        T.REORDER,
        _A.NEUTRAL,
        "3 chunks c0 c1 c2 (c1 starts where c0 ends, each of the size)",
        "c1, c2, then c0 (the current chunk moves two chunks later)",
    )
    for a, k in JUMP_UNITS.items():
        add(
            T.JUMP_BACK,
            a,
            (
                "back to the start of the unit of the size that contains beat h-1"
                if k == 1
                else "back to the start of the unit before the one that contains beat h-1 (beat 0 if none)"
            ),
            "nothing (the head moves back; later actions replay the beats)",
            f"back {k} unit{'s' if k > 1 else ''}",
            k,
        )
    for a, k in SKIP_CHUNKS.items():
        add(
            T.SKIP,
            a,
            f"{k} consecutive chunks of the size (clipped at the end; before anything is kept, at the last beat)",
            "nothing",
            f"{k} chunks",
            k,
        )
    for t, side in ((T.FADE_IN, "start"), (T.FADE_OUT, "end")):
        for a, f in FADE_FRACTION.items():
            add(t, a, "n", f"{chunk} with a fade at its {side}", f"fade over {f:g} of the chunk's duration", f)
    for a, db in GAIN_DB.items():
        add(T.GAIN, a, "n", f"{chunk} with gain", f"{db:+g} dB", db)
    for t, speed in TIME_FACTOR.items():
        add(t, _A.NEUTRAL, "n", f"{chunk} played at {speed:g}x speed, pitch kept")
    add(T.REVERSE, _A.NEUTRAL, "n", f"{chunk} played backwards")
    for t, band in ((T.EQ_LOW, "low shelf"), (T.EQ_HIGH, "high shelf")):
        for a, db in EQ_DB.items():
            add(t, a, "n", f"{chunk} with a {band} EQ", f"{db:+g} dB", db)
    for a, db in DISTORTION_DB.items():
        add(T.DISTORTION, a, "n", f"{chunk} with distortion", f"drive {db:g} dB", db)
    for a, w in REVERB_WET.items():
        add(T.REVERB, a, "n", f"{chunk} with reverb", f"wet {w:g}", w)
    add(T.REPEAT_PREV, _A.NEUTRAL, "0", "the last appended segment again, with its treatment")
    add(T.SWAP_NEXT, _A.NEUTRAL, "2 chunks c0 c1 (c1 starts where c0 ends)", "c1 then c0")
    return m


#: Every allowed (type, amount) and its one meaning; anything absent is masked.
MEANING: dict[tuple[ActionType, Amount], Meaning] = _build_meaning()

#: Allowed amounts of each type (the static amount mask).
VALID_AMOUNTS: dict[ActionType, tuple[Amount, ...]] = {
    t: tuple(a for a in Amount if (t, a) in MEANING) for t in ActionType
}

#: Sizes a type may ever use; REPEAT_PREV has no chunk, so its size is always BEAT.
VALID_SIZES: dict[ActionType, tuple[Size, ...]] = {
    t: ((Size.BEAT,) if t == ActionType.REPEAT_PREV else tuple(Size)) for t in ActionType
}

_SIZE_TEXT = {
    Size.BEAT: "the beat at the head",
    Size.BAR: "to the end of the head's bar (`grid.bar`)",
    Size.TWO_BARS: "to the end of the head's 2-bar group (`grid.bar // 2`)",
    Size.PHRASE: "to the end of the head's phrase (`grid.bar // 4`)",
    Size.TWO_PHRASES: "to the end of the head's 2-phrase group (`grid.bar // 8`)",
}

#: The generated reference; ``docs/actions.md`` must equal ``meaning_markdown()``.
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "actions.md"


def meaning_markdown() -> str:
    """The full action reference as Markdown, generated from ``MEANING``."""
    lines = [
        "# Action vocabulary (generated from `envs/actions.py`; do not edit by hand)",
        "",
        "Regenerate with `python -m envs.actions --write-docs`; `tests/envs/test_actions.py`",
        "fails when this file and the code disagree.",
        "",
        f"{N_TYPES} types x {N_SIZES} sizes x {N_AMOUNTS} amounts = {N_ACTIONS} actions; flat index",
        "`(type * 5 + size) * 5 + amount` (`to_flat` / `from_flat`). The policy's three heads",
        "give type, size given type, amount given type; the executor (`envs.executor.Executor`)",
        "masks every combination that is impossible in the current state or means nothing.",
        "",
        "## Sizes: the chunk at the read head h",
        "",
        "The chunk of a size is `[h, h+n)`, from the head to the end of the grid-aligned unit",
        "that contains the head, clipped to the song's end (so the last, partial unit is",
        "always reachable and no size runs past the end). n depends on where the head is.",
        "",
        "| size | chunk |",
        "|---|---|",
    ]
    for s in Size:
        lines.append(f"| {s.name} ({int(s)}) | {_SIZE_TEXT[s]} |")
    lines += [
        "",
        "A size whose chunk (or, for REORDER / SWAP_NEXT / SKIP / JUMP_BACK, whose whole",
        "effect) equals a smaller size's at the current head is masked, so each distinct edit",
        "has one name. REPEAT_PREV uses no chunk; only its BEAT size is allowed.",
        "",
        "## Meanings of (type, amount)",
        "",
        "h = read head (raw beat), n = chunk length in beats. Amounts not listed for a type",
        "are masked.",
        "",
        "| type | amount | read head moves by | appends to the plan | amount means |",
        "|---|---|---|---|---|",
    ]
    for (t, a), mm in MEANING.items():
        lines.append(f"| {t.name} ({int(t)}) | {a.name} ({int(a)}) | {mm.consumes} | {mm.appends} | {mm.amount_text} |")
    lines += ["", "## Masked amounts", "", "| type | allowed amounts | masked amounts |", "|---|---|---|"]
    for t in ActionType:
        ok = VALID_AMOUNTS[t]
        bad = [a.name for a in Amount if a not in ok]
        lines.append(f"| {t.name} | {', '.join(a.name for a in ok)} | {', '.join(bad) or '-'} |")
    lines += [
        "",
        "## State masks (see `envs.executor.Executor.masks`)",
        "",
        "- CUT sizes that would reach the song's end while nothing has been kept (an edit",
        "  must keep something; KEEP BEAT stays valid, so some action always is). SKIP",
        "  instead stops at the last beat then, and its sizes that would land where CUT",
        "  does are masked.",
        "- JUMP_BACK at beat 0 and once the jump budget is spent.",
        "- SWAP_NEXT sizes with fewer than 2 chunks left, REORDER sizes with fewer than 3.",
        "- REPEAT_PREV before anything was appended; LOOP and REPEAT_PREV once the loop",
        "  budget (if any) is spent.",
        "- The episode ends when the head reaches the end of the song or at the step cap",
        "  (default `max(16, 4 * n_beats)` steps, `default_max_steps`). The default jump",
        "  budget is `max(16, n_beats // 8)` (`default_jump_budget`); the loop budget is",
        "  unlimited by default (the reward penalises loops, SPEC.md).",
        "",
    ]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    """``python -m envs.actions [--write-docs]``: print (or write) the reference."""
    p = argparse.ArgumentParser(prog="python -m envs.actions", description=__doc__.splitlines()[0])
    p.add_argument("--write-docs", action="store_true", help=f"write {DOCS_PATH}")
    args = p.parse_args(argv)
    try:
        text = meaning_markdown()
        if args.write_docs:
            _write_atomic(DOCS_PATH, text)
            print(f"wrote {DOCS_PATH}")
        else:
            print(text)
    except (EditorError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
