"""The 121 per-beat features: the only description of music that later stages see.

Every column has a NAME; code asks for ``feature_index("rms")`` or
``features.column("chroma_C")``, never for a bare number (the spec's first public
implementation sorted a dict of features and every hard-coded index silently pointed at
the wrong feature). ``FEATURE_NAMES`` below is the one place the columns are defined.

Pipeline (``extract_features``), all at ``ANALYSIS_SR`` = 22050 Hz, hop 512 (23.2 ms):

1. ONE STFT of the mono analysis signal (n_fft 2048, Hann, centred); every spectral
   feature, the mel spectrogram, MFCCs, chroma, the onset envelope and the DSP stems
   derive from its magnitude.
2. The beat grid (``datasets.beats.track_beats``) gets this onset envelope and chroma,
   so it computes no spectrogram of its own.
3. Frame features are averaged over each beat's frames, beat i = [bounds[i], bounds[i+1])
   (a frame belongs to the beat holding its centre; a beat shorter than one frame takes
   the frame nearest its middle). Loudness (rms, peak) is measured on the samples.
4. Beat-level features (rhythm, structure, novelty) are computed from the grid and the
   beat-synchronous features.

Columns: the 121 names, their meanings and units, and how each group is computed are in
datasets/feature_columns.py (``FEATURE_NAMES``, ``feature_index``).

CLI: ``python -m datasets.features SONG_OR_FOLDER [--out feats.npz|DIR] [--no-cache]
[--stems auto|dsp|demucs] [--jobs N] [--backend auto|pool|ray]``. A folder's songs run on
``--jobs`` local processes, or as Ray tasks (``--backend ray`` or ``RAY_ADDRESS`` set;
datasets.parallel); a killed run resumes from the cache (keyed by content, written
atomically, so several machines may share one ``EDITOR_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasets import cache as _cache
from datasets import dsp as _dsp
from datasets import stems as _stems
from datasets.audio import Audio, load_audio
from datasets.beats import BeatGrid, track_beats
from datasets.errors import EditorError, ParameterError
from datasets.feature_columns import (FEATURE_GROUPS, FEATURE_NAMES, N_FEATURES, FeatureConfig, _analyse, _Analysis,
                                      _BeatFrames, _mel_basis, _rhythm, _spectral, _stem_beats, _stem_frame_features,
                                      _structure, _timbre_harmony, feature_index)
from datasets.safety import refuse_overwrite

__all__ = [
    "FEATURE_NAMES",
    "N_FEATURES",
    "FEATURE_GROUPS",
    "feature_index",
    "BeatFeatures",
    "FeatureConfig",
    "onset_envelope_of",
    "beat_grid_of",
    "extract_features",
    "main",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BeatFeatures:
    """Per-beat features of one recording.

    values : np.ndarray [shape=(n_beats, 121), float32], raw (unnormalised), finite
    names : the column names (== FEATURE_NAMES)
    grid : the beat grid the rows belong to
    stem_method : "dsp" or "demucs:<model>", which separator gave the stem columns
    sha256 : content hash of the audio (``Audio.sha256``)
    """

    values: np.ndarray
    names: tuple[str, ...]
    grid: BeatGrid
    stem_method: str
    sha256: str = ""

    def __post_init__(self) -> None:
        assert self.values.shape == (self.grid.n_beats, len(self.names)), (self.values.shape, self.grid.n_beats)

    @property
    def n_beats(self) -> int:
        return self.grid.n_beats

    def column(self, name: str) -> np.ndarray:
        """Values of one feature [shape=(n_beats,)]."""
        if tuple(self.names) == FEATURE_NAMES:
            return self.values[:, feature_index(name)]
        try:
            return self.values[:, list(self.names).index(name)]
        except ValueError:
            raise ParameterError(f"unknown feature name {name!r}") from None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (for ``np.savez``; no pickles)."""
        return {
            "values": self.values,
            "names": np.asarray(self.names),
            "grid_json": np.asarray(json.dumps(self.grid.to_dict())),
            "stem_method": np.asarray(self.stem_method),
            "sha256": np.asarray(self.sha256),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "BeatFeatures":
        return cls(
            values=np.asarray(arrays["values"], dtype=np.float32),
            names=tuple(str(n) for n in arrays["names"]),
            grid=BeatGrid.from_dict(json.loads(str(arrays["grid_json"]))),
            stem_method=str(arrays["stem_method"]),
            sha256=str(arrays["sha256"]),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (values, names, grid as JSON, stem method)."""
        from datasets.atomic import atomic_path

        p = Path(path)
        with atomic_path(p) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no ".npz"
            np.savez(f, **self.to_arrays())
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BeatFeatures":
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})


#: Onset envelopes this process computed or read, newest last (key -> [frames] float32,
#: read-only), so the pulse ranker (alignment/grid.py) reuses the envelope the features
#: just computed instead of a second STFT of the song (~0.3 s CPU for 3 minutes). A
#: few songs of ~60 kB each: a make align worker walks many songs.
_ONSET_ENVS: dict[str, np.ndarray] = {}
_ONSET_ENVS_KEPT = 8


def _onset_key(audio: Audio, cfg: FeatureConfig) -> str:
    return _cache.make_key("onsetenv", audio_sha256=audio.sha256, config=asdict(cfg))


def _keep_onset_env(key: str, env: np.ndarray, *, save: bool) -> np.ndarray:
    """Remember ``env`` under ``key`` in this process (and in the cache when ``save``)."""
    if key in _ONSET_ENVS:
        return _ONSET_ENVS[key]
    env = np.array(env)  # its own copy, read-only: callers share it
    env.setflags(write=False)
    _ONSET_ENVS[key] = env
    while len(_ONSET_ENVS) > _ONSET_ENVS_KEPT:
        del _ONSET_ENVS[next(iter(_ONSET_ENVS))]
    if save:
        _cache.save_arrays(key, {"onset_env": env})
    return env


def onset_envelope_of(audio: Audio, cfg: FeatureConfig = FeatureConfig(), *, use_cache: bool = True) -> np.ndarray:
    """The song's onset envelope [shape=(frames,)] at ``cfg.hop_length``, read-only: what
    a listener's tapping follows, for comparing candidate pulses (alignment/grid.py).

    The one ``_analyse`` computes (``extract_features`` keeps it in this process and, with
    ``use_cache``, in the cache beside the features), else computed the same way from a
    new STFT: the same values either way.
    """
    key = _onset_key(audio, cfg)
    if key in _ONSET_ENVS:
        return _ONSET_ENVS[key]
    if use_cache:
        hit = _cache.load_arrays(
            key, required=("onset_env",),
            validate=lambda z: None if z["onset_env"].ndim == 1 else f"onset_env shape {z['onset_env'].shape}",
        )
        if hit is not None:
            return _keep_onset_env(key, hit["onset_env"], save=False)
    S = np.abs(_dsp.stft(audio.y_mono, n_fft=cfg.n_fft, hop_length=cfg.hop_length))
    mel_db = _dsp.power_to_db(_mel_basis(cfg) @ (S * S))
    env = _dsp.onset_strength(S=mel_db, aggregate=np.median, n_fft=cfg.n_fft, hop_length=cfg.hop_length)
    return _keep_onset_env(key, env, save=use_cache)


def _grid_key(audio: Audio, cfg: FeatureConfig) -> str:
    return _cache.make_key("beatgrid", audio_sha256=audio.sha256, config=asdict(cfg))


def beat_grid_of(audio: Audio, *, use_cache: bool = True, config: FeatureConfig | None = None) -> BeatGrid:
    """The beat grid ``extract_features(audio)`` tracks, without its 121 features and
    stems: the one STFT's analysis and the beat tracker (~0.9 s CPU less for a 3-minute
    song). What an aligner of one pair needs (``python -m alignment``); the grid is
    cached beside the features (``extract_features`` writes it too).
    """
    cfg = config or FeatureConfig()
    key = _grid_key(audio, cfg)
    if use_cache:
        hit = _cache.load_arrays(key, required=("grid_json",))
        if hit is not None:
            return BeatGrid.from_dict(json.loads(str(hit["grid_json"])))
    y = audio.y_mono
    a = _analyse(y, cfg)
    grid = track_beats(y=y, sr=cfg.sr, onset_env=a.onset_env, chroma=a.chroma, power=a.power, name=audio.path)
    _keep_onset_env(_onset_key(audio, cfg), a.onset_env, save=use_cache)
    if use_cache:
        _cache.save_arrays(key, {"grid_json": np.asarray(json.dumps(grid.to_dict()))})
    return grid


# =========================================================================== api
def _grid_hash(grid: BeatGrid | None) -> str | None:
    return None if grid is None else _cache.config_hash(grid.to_dict())


def _core(audio: Audio, grid: BeatGrid | None, cfg: FeatureConfig) -> tuple[_Analysis, BeatGrid, _BeatFrames, dict]:
    """Beats + every non-stem feature (what bench/features.py times)."""
    y = audio.y_mono
    a = _analyse(y, cfg)
    if grid is None:
        grid = track_beats(y=y, sr=cfg.sr, onset_env=a.onset_env, chroma=a.chroma, power=a.power, name=audio.path)
    bf = _BeatFrames(grid, a.S.shape[1], cfg)
    f = _spectral(a, y, grid, bf, cfg)
    f.update(_timbre_harmony(a, bf))
    f.update(_rhythm(a, grid, bf))
    f.update(_structure(a, grid, bf, f, cfg))
    return a, grid, bf, f


def _assemble(f: dict, grid: BeatGrid, name: str) -> np.ndarray:
    missing = [k for k in FEATURE_NAMES if k not in f]
    assert not missing, f"features not computed: {missing}"
    values = np.stack([np.asarray(f[k], dtype=np.float64) for k in FEATURE_NAMES], axis=1)
    assert values.shape == (grid.n_beats, N_FEATURES), values.shape
    bad = ~np.isfinite(values)
    if bad.any():  # a bug, not a user error: say which columns, keep the pipeline alive
        cols = sorted({FEATURE_NAMES[j] for j in np.nonzero(bad)[1]})
        log.warning("%s: non-finite values in %s replaced by 0", name, cols)
        values = np.where(bad, 0.0, values)
    return values.astype(np.float32)


def extract_features(
    audio: Audio,
    *,
    grid: BeatGrid | None = None,
    stems: str = "auto",
    use_cache: bool = True,
    stem_model: Any = None,
    config: FeatureConfig | None = None,
) -> BeatFeatures:
    """The 121 per-beat features of a recording (see the module docstring).

    audio : from ``datasets.audio.load_audio``
    grid : beat grid to use; None tracks beats (sharing this STFT's onset envelope/chroma)
    stems : "auto" (demucs if weights exist, else the DSP fallback), "dsp" or "demucs"
    use_cache : read/write ``runs/cache/features`` ($EDITOR_CACHE_DIR); keyed by the audio
        hash, the config, the stem method, the grid (when given) and the code version
    stem_model : demucs model name/file/folder (see datasets.stems)

    Raises AudioError when no beat grid can be found (silent, too short).
    """
    cfg = config or FeatureConfig()
    label, net = _stems.resolve_method(stems, model=stem_model)
    key = _cache.make_key(
        "features", audio_sha256=audio.sha256, config={**asdict(cfg), "stems": label, "grid": _grid_hash(grid)}
    )
    if use_cache:
        hit = _cache.load_arrays(
            key, required=("values", "names", "grid_json", "stem_method", "sha256"), validate=_validate_entry
        )
        if hit is not None:
            return BeatFeatures.from_arrays(hit)
    grid_given = grid
    a, grid, bf, f = _core(audio, grid, cfg)
    _keep_onset_env(_onset_key(audio, cfg), a.onset_env, save=use_cache)  # for the pulse ranker
    if use_cache and grid_given is None:  # the tracked grid, for beat_grid_of
        _cache.save_arrays(_grid_key(audio, cfg), {"grid_json": np.asarray(json.dumps(grid.to_dict()))})
    f.update(_stem_beats(_stem_frame_features(a, audio, label, net, cfg, use_cache), bf))
    feats = BeatFeatures(
        values=_assemble(f, grid, audio.path), names=FEATURE_NAMES, grid=grid, stem_method=label, sha256=audio.sha256
    )
    if use_cache:
        _cache.save_arrays(key, feats.to_arrays())
    return feats


def _validate_entry(z: dict) -> str | None:
    try:
        names = tuple(str(n) for n in z["names"])
        grid = BeatGrid.from_dict(json.loads(str(z["grid_json"])))
    except Exception as exc:
        return f"bad names/grid ({type(exc).__name__})"
    if names != FEATURE_NAMES:
        return "feature names differ"
    v = z["values"]
    if v.dtype != np.float32 or v.shape != (grid.n_beats, N_FEATURES):
        return f"values {v.dtype} {v.shape}, expected float32 {(grid.n_beats, N_FEATURES)}"
    if not np.isfinite(v).all():
        return "non-finite values"
    return None


# =========================================================================== CLI
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff", ".w64")


def _one(path: str, out: str | None, stems: str, use_cache: bool) -> dict:
    """Worker: features of one file -> summary dict (errors as {'error': msg})."""
    t0 = time.perf_counter()
    try:
        audio = load_audio(path)
        feats = extract_features(audio, stems=stems, use_cache=use_cache)
        if out:
            feats.save(out)
    except EditorError as exc:
        return {"path": path, "error": str(exc)}
    g = feats.grid
    return {
        "path": path,
        "tempo": g.tempo,
        "meter": g.beats_per_bar,
        "beats": g.n_beats,
        "bars": len(np.unique(g.bar)),
        "duration": g.duration,
        "stem_method": feats.stem_method,
        "seconds": time.perf_counter() - t0,
        "out": out,
    }


def _summary(r: dict) -> str:
    line = (
        f"{r['path']}: tempo {r['tempo']:.1f} BPM, meter {r['meter']}/4, {r['beats']} beats "
        f"({r['bars']} bars), duration {r['duration']:.1f} s, stems {r['stem_method']}, "
        f"{r['seconds']:.2f} s"
    )
    return line + (f" -> {r['out']}" if r.get("out") else "")


def _worker_init(level: int) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.features SONG|FOLDER [--out F] [--no-cache] [--stems M] [--jobs N] [--backend B]``."""
    from datasets.parallel import add_backend_args, run_items

    p = argparse.ArgumentParser(prog="python -m datasets.features", description="Per-beat features (121 named columns).")
    p.add_argument("input", help="audio file, or a folder of audio files")
    p.add_argument("--out", help="output .npz (file input) or folder for NAME.npz files (folder input)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--stems", choices=_stems.METHODS, default="auto", help="stem separation method")
    add_backend_args(p, jobs_default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    _worker_init(level)
    src = Path(args.input)
    if not src.is_dir():
        try:
            refuse_overwrite([args.out], [src])  # --out song.wav would replace the song
        except EditorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        r = _one(str(src), args.out, args.stems, not args.no_cache)
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
            return 2
        print(_summary(r))
        return 0

    files = sorted(str(f) for f in src.iterdir() if f.suffix.lower() in AUDIO_EXTS and f.is_file())
    if not files:
        print(f"error: {src}: no audio files ({', '.join(AUDIO_EXTS)}) in this folder", file=sys.stderr)
        return 2
    outs = [str(Path(args.out) / (Path(f).stem + ".npz")) if args.out else None for f in files]
    try:  # a.wav and a.flac would both write a.npz; --out must not be (in) an input
        refuse_overwrite([o for o in outs if o], files)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Decide the stem method once here, so workers neither retry a missing model nor
    # repeat the fallback warning once per process.
    try:
        label, _ = _stems.resolve_method(args.stems)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    method = "dsp" if label == "dsp" else args.stems
    from tqdm import tqdm

    results: list[dict] = []
    t0 = time.perf_counter()
    try:
        outcomes = run_items(
            _one, [(f, o, method, not args.no_cache) for f, o in zip(files, outs)], jobs=args.jobs, backend=args.backend,
            initializer=_worker_init, initargs=(level,),
        )
        for o in tqdm(outcomes, total=len(files), desc="features", unit="file"):
            # a crash (not an EditorError) or a dead worker: that file's one error line
            results.append(o.value if o.ok else {"path": o.name, "error": o.error if o.name in o.error else f"{o.name}: {o.error}"})
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results.sort(key=lambda r: r["path"])
    errors = [r for r in results if "error" in r]
    for r in results:
        print(f"error: {r['error']}" if "error" in r else _summary(r), file=sys.stderr if "error" in r else sys.stdout)
    audio_s = sum(r["duration"] for r in results if "error" not in r)
    print(f"{len(results) - len(errors)}/{len(results)} files, {audio_s:.1f} s of audio in {time.perf_counter() - t0:.1f} s")
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
