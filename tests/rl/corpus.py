"""A tiny labelled run from real recordings, for the end-to-end fine-tuning test.

Two short slices of ../shared/data/music, a beat grid each, a "human" plan that keeps
two bars and cuts one (whole bars: a style the vocabulary expresses exactly), oracle
actions, runs/RUN/labels/{NAME.json, index.json} in the align worker's format, and an
untrained policy saved as the run's bc_best.pt (the fine-tuning pipeline, not BC, is
what the test checks).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MUSIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "music"
SONGS = ("race1-jt.ogg", "start1-jt.ogg")


def human_plan(grid, sha256: str):
    """Keep 2 bars, cut 1, repeat: segments on bar lines."""
    from envs.plan import EditPlan, Segment

    starts = np.flatnonzero(grid.beat_in_bar == 0).tolist() + [grid.n_beats]
    segs = []
    for k in range(0, len(starts) - 2, 3):
        segs.append(Segment(int(starts[k]), int(starts[min(k + 2, len(starts) - 1)])))
    return EditPlan(segments=tuple(segs), grid=grid, source_sha256=sha256)


def build_run(root: Path, *, seconds: float = 16.0, hidden: int = 16, songs=SONGS) -> Path:
    """Write runs/tiny under ``root``; returns the run folder."""
    import torch

    from agent.checkpoint import save_checkpoint
    from agent.layout import observation_layout
    from agent.model import Policy, PolicyConfig
    from datasets.audio import load_audio, write_audio
    from datasets.beats import track_beats
    from envs.oracle import oracle_actions

    run = root / "tiny"
    (run / "labels").mkdir(parents=True, exist_ok=True)
    (root / "raw").mkdir(exist_ok=True)
    index = {}
    for name in songs:
        src = load_audio(MUSIC / name)
        y = src.y[:, : int(seconds * src.sr)]
        raw = root / "raw" / (Path(name).stem + ".wav")
        write_audio(raw, y=y, sr=src.sr)
        audio = load_audio(raw)
        grid = track_beats(y=audio.y_mono, sr=22050)
        plan = human_plan(grid, audio.sha256)
        actions = oracle_actions(plan, strict=False)
        stem = Path(name).stem
        label = run / "labels" / f"{stem}.json"
        label.write_text(json.dumps({"actions": [list(a) for a in actions], "plan": plan.to_dict(),
                                     "raw_path": str(raw), "raw_sha256": audio.sha256}))
        index[stem] = {"label": str(label)}
    (run / "labels" / "index.json").write_text(json.dumps(index))
    torch.manual_seed(0)
    policy = Policy(PolicyConfig.from_layout(hidden=hidden, n_heads=4))
    save_checkpoint(run / "checkpoints" / "bc_best.pt", model=policy, stage="pretrain", layout=observation_layout(),
                    extra={"target_keep": 0.5, "stem_method": "dsp"})
    return run
