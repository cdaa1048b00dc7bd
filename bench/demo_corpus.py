"""Demo corpus quality: does the pipeline's beat grid find the songs' true beats, and what
do the personas keep?

    .venv/bin/python bench/demo_corpus.py [--n-proc 12] [--n-midi 10] [--seconds 60]

For every song (procedural families and MIDI renders) the raw is written and re-loaded as
the pipeline does, the grid comes from ``extract_features`` (``track_beats``), and:

- beat F-measure (mir_eval, +-70 ms) of the grid against the true beats, with librosa's
  default ``beat_track`` as the baseline measured in the same run;
- tempo octave: tracked / true tempo (1 = right, 0.5 = half tempo, 2 = double);
- meter accuracy (3 vs 4) and downbeat F-measure;
- keep ratio of each persona's plan;
- synthesis speed (seconds of audio per second of CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mir_eval  # noqa: E402
import numpy as np  # noqa: E402

from datasets.audio import load_audio, write_audio  # noqa: E402
from datasets.demo.build import DEFAULT_MIDI_DIR, _midi_candidates  # noqa: E402
from datasets.demo.editors import PERSONAS, plan_edit  # noqa: E402
from datasets.demo.midi import midi_backend, render_midi  # noqa: E402
from datasets.demo.songs import generate_song  # noqa: E402
from datasets.features import extract_features  # noqa: E402

_PROC = ((4, 0.0), (3, 0.0), (4, 0.02), (3, 0.02))


def _f(ref: np.ndarray, est: np.ndarray) -> float:
    return float(mir_eval.beat.f_measure(mir_eval.beat.trim_beats(ref), mir_eval.beat.trim_beats(est)))


def _octave(ratio: float) -> str:
    for name, r in (("1", 1.0), ("1/2", 0.5), ("2", 2.0), ("2/3", 2 / 3), ("3/2", 1.5)):
        if abs(ratio / r - 1.0) < 0.06:
            return name
    return f"{ratio:.2f}"


def evaluate(song, tmp: Path) -> dict:
    import librosa

    path = tmp / f"{song.name}.wav"
    write_audio(path, y=song.y, sr=song.sr, subtype="PCM_16")
    audio = load_audio(path)
    feats = extract_features(audio, stems="dsp", use_cache=False)
    g = feats.grid
    _, base = librosa.beat.beat_track(y=audio.y_mono, sr=22050, units="time")
    row = {
        "name": song.name,
        "family": song.family,
        "tempo": song.tempo,
        "f": _f(song.beat_times, g.times[g.times > 0]),
        "f_base": _f(song.beat_times, base),
        "octave": _octave(g.tempo / song.tempo),
        "meter_ok": g.beats_per_bar == song.beats_per_bar,
        "f_down": _f(song.downbeat_times, g.times[g.is_downbeat]),
    }
    for p in PERSONAS:
        row[p] = plan_edit(feats, p, source_sha256=audio.sha256).keep_ratio
    path.unlink()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-proc", type=int, default=12)
    ap.add_argument("--n-midi", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--midi-dir", default=str(DEFAULT_MIDI_DIR))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(args.seed)
    rows = []
    synth_cpu, synth_audio = {}, {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in range(args.n_proc):
            bpb, drift = _PROC[i % len(_PROC)]
            c0 = time.process_time()
            s = generate_song(seed=int(rng.integers(2**31 - 1)), seconds=args.seconds, beats_per_bar=bpb, drift=drift, name=f"proc{i:02d}")
            synth_cpu["procedural"] = synth_cpu.get("procedural", 0.0) + time.process_time() - c0
            synth_audio["procedural"] = synth_audio.get("procedural", 0.0) + s.duration
            rows.append(evaluate(s, tmp))
        midi_dir = Path(args.midi_dir)
        backend = midi_backend()
        if args.n_midi and midi_dir.is_dir():
            for f in _midi_candidates(midi_dir)[: args.n_midi]:
                c0 = time.process_time()
                s = render_midi(f, max_seconds=args.seconds, backend=backend)
                synth_cpu["midi"] = synth_cpu.get("midi", 0.0) + time.process_time() - c0
                synth_audio["midi"] = synth_audio.get("midi", 0.0) + s.duration
                s = type(s)(**{**s.__dict__, "family": f"midi ({backend})"})
                rows.append(evaluate(s, tmp))
        elif args.n_midi:
            print(f"(no MIDI: {midi_dir} not found)")

    print(f"{'song':28s} {'family':22s} {'bpm':>5s} {'F':>6s} {'F lib':>6s} {'oct':>4s} {'meter':>5s} {'F down':>6s}  " + " ".join(f"{p:>8s}" for p in PERSONAS))
    for r in rows:
        print(f"{r['name'][:28]:28s} {r['family']:22s} {r['tempo']:5.0f} {r['f']:6.3f} {r['f_base']:6.3f} {r['octave']:>4s} {str(r['meter_ok']):>5s} {r['f_down']:6.3f}  "
              + " ".join(f"{r[p]:8.3f}" for p in PERSONAS))
    print()
    fams = sorted({r["family"] for r in rows})
    print(f"{'family':22s} {'n':>3s} {'F mean':>7s} {'F min':>6s} {'F>=.9':>6s} {'F lib':>6s} {'ratio':>6s} {'octave ok':>9s} {'meter':>6s} {'F down':>6s}")
    for fam in fams + ["all"]:
        rs = [r for r in rows if fam in ("all", r["family"])]
        f = np.array([r["f"] for r in rs])
        fb = np.array([r["f_base"] for r in rs])
        print(f"{fam:22s} {len(rs):3d} {f.mean():7.3f} {f.min():6.3f} {np.mean(f >= 0.9):6.2f} {fb.mean():6.3f} {f.mean() / max(fb.mean(), 1e-9):6.2f} "
              f"{np.mean([r['octave'] == '1' for r in rs]):9.2f} {np.mean([r['meter_ok'] for r in rs]):6.2f} {np.mean([r['f_down'] for r in rs]):6.3f}")
    print()
    print(f"{'persona':10s} {'documented':>12s} {'mean':>6s} {'std':>6s} {'min':>6s} {'max':>6s} {'in range':>8s}")
    for p, per in PERSONAS.items():
        k = np.array([r[p] for r in rows])
        lo, hi = per.keep_range
        print(f"{p:10s} {lo:5.2f}-{hi:5.2f} {k.mean():6.3f} {k.std():6.3f} {k.min():6.3f} {k.max():6.3f} {np.mean((k >= lo) & (k <= hi)):8.2f}")
    print()
    for kind in synth_cpu:
        print(f"synthesis {kind:10s}: {synth_audio[kind] / synth_cpu[kind]:6.1f} s of audio per CPU second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
