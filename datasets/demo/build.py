"""Build the demo corpus: raw songs, persona edits and their ground truth.

Usage::

    python -m datasets.demo.build --out runs/demo/data --n-songs 24 --persona tight --seed 0 --jobs 2

writes, for every song NAME::

    OUT/raw/NAME.wav      the raw song (16-bit WAV, stereo 44.1 kHz)
    OUT/edited/NAME.wav   the persona's edit rendered by envs.render (16-bit WAV 44.1 kHz),
                          or, for "delivered" songs, after gain/compression/MP3/48 kHz
                          (truth.edited.delivered says which)
    OUT/truth/NAME.json   plan (EditPlan.to_dict), true beats/downbeats/sections, persona,
                          delivery parameters, the tracked grid's beat F-measure
    OUT/manifest.json     the build config and each song's config hash

Songs are a mix of procedural songs (``datasets.demo.songs``) and renders of the MIDI
files in ``--midi-dir`` (``datasets.demo.midi``; skipped, with a message, when the folder
is absent). A song whose truth file carries the same config hash (the song's recipe plus
the source of every module that shapes the output) is skipped, so a second run is
instant. Files of songs no longer in the corpus are removed.

The user's ``training_data/`` is never written: an ``--out`` inside a folder named
``training_data``, or a non-empty folder that is not a demo corpus, is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from datasets.atomic import atomic_write_json
from datasets.errors import EditorError, ParameterError
from datasets.safety import refuse_overwrite

__all__ = ["BuildConfig", "Item", "plan_items", "build_item", "build", "main"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MIDI_DIR = ROOT.parent / "shared" / "data" / "midi"
#: Sources whose code shapes the corpus: a change to any of them rebuilds every song.
_CODE = (
    "datasets/demo/songs.py", "datasets/demo/synth.py", "datasets/demo/midi.py", "datasets/demo/editors.py",
    "datasets/demo/delivery.py", "datasets/demo/build.py", "datasets/beats.py", "datasets/features.py",
    "datasets/audio.py", "envs/plan.py", "envs/render.py",
)
#: Procedural families cycled through the corpus: (beats per bar, tempo drift).
_FAMILIES = ((4, 0.0), (4, 0.02), (3, 0.0), (4, 0.0), (3, 0.02), (4, 0.02))


@dataclass(frozen=True)
class BuildConfig:
    out: str = "runs/demo/data"
    n_songs: int = 24
    persona: str = "tight"  # a persona name, or "mixed" (cycles through all)
    seed: int = 0
    jobs: int = 2
    min_seconds: float = 60.0
    max_seconds: float = 120.0
    midi_fraction: float = 0.5
    midi_dir: str = str(DEFAULT_MIDI_DIR)
    delivery_fraction: float = 0.5
    backend: str = "auto"  # MIDI synthesis: auto, fluidsynth, additive


@dataclass(frozen=True)
class Item:
    """One song's recipe (everything its files depend on, with the code hash)."""

    name: str
    kind: str  # "procedural" or "midi"
    seed: int
    seconds: float
    beats_per_bar: int | None
    drift: float | None
    midi_file: str | None
    persona: str
    delivery: dict | None  # DeliveryParams as a dict, or None (the render's own output)
    backend: str
    code: str

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _code_hash() -> str:
    h = hashlib.sha256()
    for rel in _CODE:
        p = ROOT / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:16]


def _midi_candidates(midi_dir: Path) -> list[Path]:
    """MIDI files in a supported meter (3/4, 4/4) and at least 30 s long, sorted."""
    import warnings

    import pretty_midi

    out = []
    for p in sorted(midi_dir.glob("*.mid")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pm = pretty_midi.PrettyMIDI(str(p))
        except Exception as exc:
            log.warning("%s: skipped, not readable (%s)", p.name, exc)
            continue
        ts = pm.time_signature_changes
        num, den = (ts[0].numerator, ts[0].denominator) if ts else (4, 4)
        if den == 4 and num in (3, 4) and pm.get_end_time() >= 30.0:
            out.append(p)
    return out


def plan_items(cfg: BuildConfig) -> list[Item]:
    """The corpus recipe: which songs, which persona, which delivery (deterministic)."""
    from datasets.demo.delivery import sample_delivery
    from datasets.demo.editors import PERSONAS

    if cfg.persona != "mixed" and cfg.persona not in PERSONAS:
        raise ParameterError(f"unknown persona {cfg.persona!r} (choose from {', '.join(PERSONAS)}, mixed)")
    if cfg.n_songs < 1:
        raise ParameterError(f"--n-songs must be >= 1, got {cfg.n_songs}")
    if not 20.0 <= cfg.min_seconds <= cfg.max_seconds <= 300.0:
        raise ParameterError(f"need 20 <= min_seconds <= max_seconds <= 300, got {cfg.min_seconds}, {cfg.max_seconds}")
    rng = np.random.default_rng(cfg.seed)
    midi_dir = Path(cfg.midi_dir)
    midis: list[Path] = []
    if cfg.midi_fraction > 0:
        if midi_dir.is_dir():
            midis = _midi_candidates(midi_dir)
        else:
            print(f"demo: MIDI folder {midi_dir} not found; the corpus is procedural only", file=sys.stderr)
    n_midi = min(len(midis), int(round(cfg.n_songs * cfg.midi_fraction)))
    chosen = [midis[i] for i in sorted(rng.permutation(len(midis))[:n_midi])]
    # Interleave MIDI and procedural songs so any prefix of the corpus is a mix.
    kinds = ["midi" if (i * n_midi) // cfg.n_songs != ((i + 1) * n_midi) // cfg.n_songs else "procedural" for i in range(cfg.n_songs)]
    # Exactly round(n * fraction) deliveries, drawn independently of the song kinds.
    delivered = set(rng.permutation(cfg.n_songs)[: int(round(cfg.n_songs * cfg.delivery_fraction))].tolist())
    personas = list(PERSONAS)
    code = _code_hash()
    items: list[Item] = []
    k_proc = k_midi = 0
    for i, kind in enumerate(kinds):
        seed = int(rng.integers(0, 2**31 - 1))
        seconds = round(float(rng.uniform(cfg.min_seconds, cfg.max_seconds)), 1)
        deliver = i in delivered
        delivery = sample_delivery(np.random.default_rng(seed)).to_dict() if deliver else None
        persona = personas[i % len(personas)] if cfg.persona == "mixed" else cfg.persona
        if kind == "midi":
            f = chosen[k_midi]
            k_midi += 1
            items.append(Item(f"{i:03d}_midi_{f.stem}", "midi", seed, seconds, None, None, str(f), persona, delivery, cfg.backend, code))
        else:
            bpb, drift = _FAMILIES[k_proc % len(_FAMILIES)]
            k_proc += 1
            tag = f"{bpb}4" + ("d" if drift else "")
            items.append(Item(f"{i:03d}_song_{tag}_{seed % 100000:05d}", "procedural", seed, seconds, bpb, drift, None, persona, delivery, "", code))
    return items


def _f_measure(ref: np.ndarray, est: np.ndarray) -> float:
    import mir_eval

    return float(mir_eval.beat.f_measure(mir_eval.beat.trim_beats(np.asarray(ref)), mir_eval.beat.trim_beats(np.asarray(est))))


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)


def build_item(item: Item, out: str | os.PathLike) -> dict:
    """Make one song's raw, edited and truth files; returns a summary row."""
    from datasets.audio import load_audio, write_audio
    from datasets.demo.delivery import DeliveryParams, deliver
    from datasets.demo.editors import PERSONAS, plan_edit
    from datasets.demo.midi import render_midi
    from datasets.demo.songs import generate_song
    from datasets.features import extract_features
    from envs.render import render

    out = Path(out)
    t0 = time.perf_counter()
    if item.kind == "midi":
        song = render_midi(item.midi_file, max_seconds=item.seconds, backend=item.backend, name=item.name)
    else:
        song = generate_song(seed=item.seed, seconds=item.seconds, beats_per_bar=item.beats_per_bar, drift=item.drift, name=item.name)
    t_song = time.perf_counter() - t0
    raw_path = out / "raw" / f"{item.name}.wav"
    write_audio(raw_path, y=song.y, sr=song.sr, subtype="PCM_16")
    # Everything downstream sees the file as the pipeline will load it.
    audio = load_audio(raw_path)
    feats = extract_features(audio, stems="dsp")
    plan = plan_edit(feats, item.persona, source_sha256=audio.sha256)
    res = render(y=audio.y, sr=audio.sr, plan=plan)
    edited, sr_e, delivery = res.y, res.sr, None
    if item.delivery is not None:
        d = deliver(y=res.y, sr=res.sr, params=DeliveryParams(**item.delivery))
        edited, sr_e, delivery = d.y, d.sr, d.to_dict()
    ed_path = out / "edited" / f"{item.name}.wav"
    write_audio(ed_path, y=edited, sr=sr_e, subtype="PCM_16")
    grid = feats.grid
    f_beat = _f_measure(song.beat_times, grid.times[grid.times > 0])
    f_down = _f_measure(song.downbeat_times, grid.times[grid.is_downbeat])
    truth = {
        "name": item.name,
        "config_hash": item.config_hash,
        "recipe": asdict(item),
        "family": song.family,
        "persona": item.persona,
        "persona_keep_range": list(PERSONAS[item.persona].keep_range),
        "raw": {"path": f"raw/{item.name}.wav", "sr": audio.sr, "duration_s": audio.duration, "sha256": audio.sha256},
        "edited": {
            "path": f"edited/{item.name}.wav",
            "sr": int(sr_e),
            "duration_s": edited.shape[1] / sr_e,
            "rendered_duration_s": res.duration,
            "rendered_sr": res.sr,
            "delivered": delivery is not None,
            "format": "16-bit WAV decoded from MP3, resampled" if delivery else "16-bit WAV of the render",
            "delivery": delivery,
        },
        "song": song.truth(),
        "tracked": {
            "tempo": grid.tempo,
            "beats_per_bar": grid.beats_per_bar,
            "n_beats": grid.n_beats,
            "beat_f_measure": f_beat,
            "downbeat_f_measure": f_down,
            "meter_correct": grid.beats_per_bar == song.beats_per_bar,
        },
        "keep_ratio": plan.keep_ratio,
        "plan": plan.to_dict(),
    }
    _write_json(out / "truth" / f"{item.name}.json", truth)
    return {
        "name": item.name,
        "family": song.family,
        "backend": song.meta.get("backend", ""),
        "duration_s": audio.duration,
        "keep_ratio": plan.keep_ratio,
        "beat_f": f_beat,
        "downbeat_f": f_down,
        "meter_ok": grid.beats_per_bar == song.beats_per_bar,
        "seconds": time.perf_counter() - t0,
        "song_seconds": t_song,
    }


def _up_to_date(item: Item, out: Path) -> bool:
    t = out / "truth" / f"{item.name}.json"
    if not (t.exists() and (out / "raw" / f"{item.name}.wav").exists() and (out / "edited" / f"{item.name}.wav").exists()):
        return False
    try:
        return json.loads(t.read_text()).get("config_hash") == item.config_hash
    except (OSError, json.JSONDecodeError):
        return False


def _check_out(out: Path, midi_dir: Path) -> None:
    """Refuse to write where the user's data lives, or where the MIDI files it reads are."""
    resolved = out.resolve()
    if "training_data" in resolved.parts:
        raise ParameterError(f"{out}: refusing to write the demo corpus inside training_data/ (the user's data)")
    if resolved.exists() and not resolved.is_dir():
        raise ParameterError(f"{out}: is a file, not a folder; name a folder for the demo corpus")
    refuse_overwrite([], [midi_dir], folders=[out])  # the corpus folder's stale files are deleted
    if resolved.exists() and any(resolved.iterdir()) and not (resolved / "manifest.json").exists():
        raise ParameterError(f"{out}: folder exists, is not empty and is not a demo corpus (no manifest.json)")


def _worker_init() -> None:
    logging.basicConfig(level=logging.WARNING)


def _run(args: tuple[Item, str]) -> dict:
    item, out = args
    try:
        return build_item(item, out)
    except EditorError as exc:
        return {"name": item.name, "error": str(exc)}


def build(cfg: BuildConfig, *, progress: bool = True) -> list[dict]:
    """Build (or bring up to date) the corpus; returns one summary row per song built."""
    out = Path(cfg.out)
    _check_out(out, Path(cfg.midi_dir))
    items = plan_items(cfg)
    todo = [it for it in items if not _up_to_date(it, out)]
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "manifest.json", {"config": asdict(cfg), "items": {}, "complete": False})
    # Files of songs that left the corpus (a smaller --n-songs, another seed) go away,
    # so that pair discovery finds exactly this corpus.
    names = {it.name for it in items}
    for sub, ext in (("raw", ".wav"), ("edited", ".wav"), ("truth", ".json")):
        for p in (out / sub).glob(f"*{ext}") if (out / sub).is_dir() else []:
            if p.stem not in names:
                p.unlink()
    rows: list[dict] = []
    if todo:
        from tqdm import tqdm

        os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread per worker
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        jobs = max(1, min(cfg.jobs, len(todo)))
        bar = tqdm(total=len(todo), desc="demo corpus", unit="song", disable=not progress)
        work = [(it, str(out)) for it in todo]
        # spawn: no fork of a process that may hold BLAS/torch threads. An executor, not a
        # Pool: a worker that dies (a segfault) raises BrokenProcessPool instead of leaving
        # the build waiting forever. One fresh process per song, also for --jobs 1, so that
        # no song depends on what its worker rendered before: two --jobs 2 builds of one
        # 8-song corpus once differed in two FluidSynth-rendered MIDI raws (max 0.001, the
        # edits with them), which songs shared a worker being up to the scheduler. Cause not
        # pinned down (it came back in 1 of 2 tries); with a process per song, 4 builds
        # (--jobs 2, 2, 1, 2) were byte-identical, and the build took no longer (29 s vs 32 s).
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        from datasets.procs import pool_kwargs  # workers die with this process

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), max_tasks_per_child=1,
                                 **pool_kwargs(_worker_init)) as pool:
            try:
                for fut in as_completed([pool.submit(_run, w) for w in work]):
                    rows.append(fut.result())
                    bar.update(1)
            except BrokenProcessPool:
                raise EditorError(
                    "demo corpus: a worker process crashed (a corrupt numba cache? "
                    "python -m datasets.warmup after deleting .venv/**/librosa/**/*.nb[ci])"
                ) from None
        bar.close()
    errors = [r for r in rows if "error" in r]
    for r in errors:
        print(f"demo: {r['name']}: {r['error']}", file=sys.stderr)
    _write_json(
        out / "manifest.json",
        {
            "config": asdict(cfg),
            "items": {it.name: it.config_hash for it in items if _up_to_date(it, out)},
            "complete": not errors,
        },
    )
    return rows


def get_parser() -> argparse.ArgumentParser:
    d = BuildConfig()
    ap = argparse.ArgumentParser(prog="python -m datasets.demo.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=d.out, help="corpus folder (never inside training_data/)")
    ap.add_argument("--n-songs", type=int, default=d.n_songs, help="number of songs")
    ap.add_argument("--persona", default=d.persona, help="tight, extended, radio or mixed")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--jobs", type=int, default=d.jobs, help="worker processes")
    ap.add_argument("--min-seconds", type=float, default=d.min_seconds)
    ap.add_argument("--max-seconds", type=float, default=d.max_seconds)
    ap.add_argument("--midi-fraction", type=float, default=d.midi_fraction, help="share of MIDI-rendered songs")
    ap.add_argument("--midi-dir", default=d.midi_dir)
    ap.add_argument("--delivery-fraction", type=float, default=d.delivery_fraction, help="share of MP3/48k deliveries")
    ap.add_argument("--backend", default=d.backend, choices=("auto", "fluidsynth", "additive"), help="MIDI synthesis")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    cfg = BuildConfig(
        out=args.out, n_songs=args.n_songs, persona=args.persona, seed=args.seed, jobs=args.jobs,
        min_seconds=args.min_seconds, max_seconds=args.max_seconds, midi_fraction=args.midi_fraction,
        midi_dir=args.midi_dir, delivery_fraction=args.delivery_fraction, backend=args.backend,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        from datasets.demo.midi import midi_backend

        if cfg.midi_fraction > 0:
            backend = midi_backend() if cfg.backend == "auto" else cfg.backend
            print(f"demo: MIDI songs are synthesised with {backend}"
                  + ("" if backend == "fluidsynth" else " (FluidSynth not installed: plain additive fallback)"))
        rows = build(cfg, progress=not args.quiet)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = [r for r in rows if "error" not in r]
    n = cfg.n_songs
    print(f"demo: {len(done)} songs built, {n - len(rows)} up to date, {len(rows) - len(done)} failed, "
          f"{time.perf_counter() - t0:.1f} s -> {cfg.out}")
    if done:
        kr = np.array([r["keep_ratio"] for r in done])
        bf = np.array([r["beat_f"] for r in done])
        print(f"demo: keep ratio {kr.mean():.3f} (min {kr.min():.3f}, max {kr.max():.3f}); "
              f"tracked-beat F-measure mean {bf.mean():.3f}")
    return 0 if len(done) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
