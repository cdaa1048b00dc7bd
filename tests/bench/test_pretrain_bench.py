"""bench/pretrain.py --planner-kind reaches both places the planner is built: the
out-of-fold plan priors (agent.planner.oof_priors) and the PretrainConfig."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import agent.planner
from agent.planner import PlannerConfig
from bench import pretrain as bp
from pretrain.augment import IDENTITY

RUN_PERSONA = bp.run_persona  # before _args patches it


class _Stop(Exception):
    pass


@pytest.fixture(autouse=True)
def _logger_levels():
    """bench/pretrain.py's main quiets loggers for the whole process, as a script should;
    here it runs inside the test session, so later tests must get their levels back."""
    import logging

    names = ("pretrain.train", "d3rlpy")
    before = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)


def _args(monkeypatch, argv: list[str]):
    """The parsed command line of ``main(argv)``, with nothing loaded or trained."""
    seen = []
    monkeypatch.setattr(bp, "_load_songs", lambda *a: ["song"])
    monkeypatch.setattr(bp, "run_persona", lambda persona, songs, args, fold=0: seen.append(args) or [])
    assert bp.main(["--personas", "tight", "--baselines", *argv]) == 0
    return seen[0]


@pytest.mark.parametrize("kind", ["mlp", "attention", "rank"])
def test_planner_kind_reaches_the_priors_and_the_config(monkeypatch, tmp_path, kind):
    args = _args(monkeypatch, ["--planner-kind", kind, "--folds", "2"])
    assert bp._pretrain_config(args, str(tmp_path)).planner_kind == kind

    pairs = [SimpleNamespace(name=f"s{i}", raw_sha256=f"h{i}", plan=SimpleNamespace(grid=None)) for i in range(4)]
    songs = {(p.name, IDENTITY.key()): SimpleNamespace(values=None) for p in pairs}
    monkeypatch.setattr(bp, "_persona_pairs", lambda *a, **k: (pairs, songs, {}))
    used = []

    def oof_priors(rows, cfg=PlannerConfig()):
        used.append((len(rows), cfg))
        raise _Stop  # stop before features and training

    monkeypatch.setattr(agent.planner, "oof_priors", oof_priors)
    with pytest.raises(_Stop):
        RUN_PERSONA("tight", [], args, fold=0)
    assert used == [(2, PlannerConfig(kind=kind))]  # the 2 training songs of fold 0


def test_default_is_the_planner_configs_and_bad_kinds_are_refused(monkeypatch, tmp_path, capsys):
    args = _args(monkeypatch, [])
    assert args.planner_kind == PlannerConfig().kind
    assert bp._pretrain_config(args, str(tmp_path)).planner_kind == PlannerConfig().kind
    no = _args(monkeypatch, ["--no-planner"])
    assert bp._pretrain_config(no, str(tmp_path)).planner is False
    with pytest.raises(SystemExit) as exc:
        bp.main(["--planner-kind", "tree"])
    assert exc.value.code == 2 and "--planner-kind" in capsys.readouterr().err
