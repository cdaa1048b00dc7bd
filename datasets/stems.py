"""Stem separation: drums, bass, vocals, other, as mono signals at ``ANALYSIS_SR``.

Two methods, one interface (``separate``), and the log says once which one ran:

``demucs``
    ``demucs.pretrained.get_model(NAME)`` (default ``htdemucs``), applied with
    ``demucs.apply.apply_model`` on the native-rate audio (resampled to the model's
    rate), on CUDA when available. ``HF_HUB_OFFLINE=1`` is set before demucs is imported
    (unless the caller set it) so a missing model fails in seconds instead of hanging on
    network retries. Where the weights come from, first match wins:

    1. ``model=`` argument: a model name, a ``.th``/``.safetensors`` file, a folder
       holding ``.th``/``.yaml`` files (a demucs "repo"), or an already built model;
    2. ``$EDITOR_DEMUCS_MODEL`` (name or file) and ``$EDITOR_DEMUCS_REPO`` (folder);
    3. ``htdemucs`` from the HuggingFace / torch hub caches on this machine.

    Whether any of these holds weights is probed on the file system first
    (``_weights_on_disk``): where none exist, "auto" falls back without importing
    torch or demucs (that import cost ~2 s of every cold start).

``dsp`` (fallback when no weights are available)
    Harmonic/percussive separation (Fitzgerald 2010 median filtering) followed by
    band splits of the harmonic part. Masks are soft and sum to one in every
    time-frequency cell, so the four stems partition the mixture's energy:

    - drums  = percussive part (median filter across frequency wins);
    - bass   = harmonic part below 250 Hz;
    - vocals = harmonic part between 250 Hz and 4 kHz, weighted by a bump on
      log-frequency that peaks at 1 kHz (where voices and lead lines carry their
      formant energy); it is an estimate of a "lead" stem, not a real vocal track;
    - other  = everything left (harmonic remainder of the mid band and all of the
      harmonic part above 4 kHz).

    To stay fast the median filters run on a 128-band mel-pooled magnitude spectrogram
    (8x fewer rows than the 1025 STFT bins) and the masks are spread back to the bins
    through the same filterbank; the cost is measured in bench/features.py.

``auto`` tries demucs and falls back to dsp with a warning naming the reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasets.audio import ANALYSIS_SR, Audio, resample, to_mono
from datasets.beats import HOP_LENGTH
from datasets.errors import EditorError, ParameterError

__all__ = [
    "STEM_NAMES",
    "METHODS",
    "Stems",
    "separate",
    "dsp_masks",
    "dsp_mask_iter",
    "resolve_method",
    "DEFAULT_DEMUCS_MODEL",
    "N_FFT",
    "stem_waveforms",
]

log = logging.getLogger(__name__)

#: Order of the stems everywhere (features, arrays). Demucs' own order differs.
STEM_NAMES = ("drums", "bass", "vocals", "other")
METHODS = ("auto", "demucs", "dsp")
DEFAULT_DEMUCS_MODEL = "htdemucs"
#: STFT size of the analysis (93 ms at 22050 Hz), shared with datasets.features.
N_FFT = 2048

#: Band edges of the DSP fallback (Hz): bass below 250 Hz (kick/bass fundamentals,
#: standard mixing crossover), lead band 250 Hz - 4 kHz (voice fundamentals + formants).
BASS_MAX_HZ = 250.0
LEAD_MIN_HZ = 250.0
LEAD_MAX_HZ = 4000.0
LEAD_PEAK_HZ = 1000.0
#: Median filter lengths: 17 frames (0.4 s) along time for the harmonic part, 17 mel
#: bands along frequency for the percussive part (librosa's default is 31 on linear
#: bins; 17 of 128 mel bands spans a similar share of the spectrum).
HPSS_KERNEL = 17
N_MEL_POOL = 128


@dataclass(frozen=True)
class Stems:
    """Four mono stems at ``sr`` (``ANALYSIS_SR``), each [shape=(n,), float32].

    method : "dsp" or "demucs:<model>" (what actually ran)
    """

    drums: np.ndarray
    bass: np.ndarray
    vocals: np.ndarray
    other: np.ndarray
    method: str
    sr: int = ANALYSIS_SR

    def as_array(self) -> np.ndarray:
        """[shape=(4, n)] in ``STEM_NAMES`` order."""
        return np.stack([getattr(self, k) for k in STEM_NAMES])


# --------------------------------------------------------------------------- logging
_logged: set[str] = set()
_lock = threading.Lock()


def _log_once(level: int, msg: str, *args: Any) -> None:
    key = msg % args if args else msg
    with _lock:
        if key in _logged:
            return
        _logged.add(key)
    log.log(level, msg, *args)


# --------------------------------------------------------------------------- dsp
_mask_basis_cache: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _dsp_bases(sr: int, n_fft: int, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mel pooling matrix [bands, bins], its column-normalised transpose [bins, bands]
    (to spread band masks back to bins) and the band-split weights [3, bins]."""
    key = (sr, n_fft, n_bins)
    if key not in _mask_basis_cache:
        from datasets.dsp import mel_filters

        fb = mel_filters(sr=sr, n_fft=n_fft, n_mels=N_MEL_POOL, norm=None)[:, :n_bins]
        back = fb.T.copy()
        cover = back.sum(axis=1, keepdims=True)
        # Bins no filter covers (DC, top bins) take the nearest band's mask.
        empty = cover[:, 0] <= 1e-9
        if empty.any():
            nearest = np.argmax(fb, axis=0)
            back[empty] = 0.0
            back[empty, nearest[empty]] = 1.0
            cover = back.sum(axis=1, keepdims=True)
        back /= cover
        freqs = np.linspace(0, sr / 2, n_bins)
        bass = (freqs < BASS_MAX_HZ).astype(np.float32)
        lo, hi, pk = np.log2(LEAD_MIN_HZ), np.log2(LEAD_MAX_HZ), np.log2(LEAD_PEAK_HZ)
        lf = np.log2(np.maximum(freqs, 1.0))
        # Asymmetric raised cosine on log2(f): 0 at 250 Hz and 4 kHz, 1 at 1 kHz.
        x = np.where(lf < pk, (lf - lo) / (pk - lo), (hi - lf) / (hi - pk))
        lead = np.where((lf > lo) & (lf < hi), 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0, 1)), 0.0)
        _mask_basis_cache[key] = (fb.astype(np.float32), back.astype(np.float32), np.stack([bass, lead]).astype(np.float32))
    return _mask_basis_cache[key]


def _median_filter(M: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``scipy.ndimage.median_filter(M, size=...)`` along one axis of a 2-D array, mode
    "reflect" (half-sample symmetric), in blocks. A median of an odd window is one of its
    elements, so any exact method gives the same array; np.partition is ~4x faster than
    ndimage's rank filter here and spares the scipy.ndimage import (~0.3 s)."""
    half = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    P = np.pad(M, pad, mode="symmetric")
    W = np.lib.stride_tricks.sliding_window_view(P, size, axis=axis)  # (rows, cols, size)
    out = np.empty_like(M)
    step = 1024  # frames per block: the partitioned copy stays ~9 MB
    for a in range(0, M.shape[1], step):
        out[:, a : a + step] = np.partition(W[:, a : a + step], half, axis=-1)[..., half]
    return out


def dsp_mask_iter(*, S: np.ndarray, sr: int = ANALYSIS_SR, n_fft: int = N_FFT):
    """The four masks of ``dsp_masks``, one at a time, each a new array the caller may
    overwrite (the feature pipeline multiplies S into it in place). At most two
    [bins, frames] arrays live here at once instead of ten: ~150 MB less on a 3-minute
    song. The arithmetic is ``dsp_masks``'s, element for element."""
    S = np.asarray(S, dtype=np.float32)
    fb, back, split = _dsp_bases(sr, n_fft, S.shape[0])
    M = fb @ S  # (bands, frames) mel-pooled magnitude
    harm = _median_filter(M, HPSS_KERNEL, axis=1)
    perc = _median_filter(M, HPSS_KERNEL, axis=0)
    # Wiener-style soft mask (power 2), as librosa.decompose.hpss(mask=True).
    h2, p2 = harm * harm, perc * perc
    denom = h2 + p2
    tiny = denom <= 1e-20
    mask_p = np.where(tiny, 0.5, p2 / np.where(tiny, 1.0, denom))
    mask_p = back @ mask_p  # (bins, frames)
    mask_h = 1.0 - mask_p
    yield mask_p
    del mask_p
    bass_w = split[0][:, None]
    lead_w = (split[1] * (1.0 - split[0]))[:, None]
    yield mask_h * bass_w
    yield mask_h * lead_w
    # other = (mask_h - bass) - lead, the products recomputed, with two arrays alive
    other = mask_h * bass_w
    np.subtract(mask_h, other, out=other)
    lead = np.multiply(mask_h, lead_w, out=mask_h)
    del mask_h
    other -= lead
    del lead
    yield other


def dsp_masks(*, S: np.ndarray, sr: int = ANALYSIS_SR, n_fft: int = N_FFT) -> np.ndarray:
    """Soft masks of the DSP fallback, summing to 1 in every cell.

    S : np.ndarray [shape=(1 + n_fft // 2, frames)] magnitude spectrogram
    Returns np.ndarray [shape=(4, 1 + n_fft // 2, frames), float32] in ``STEM_NAMES``
    order; ``masks[k] * S`` is stem k's magnitude spectrogram.
    """
    return np.stack([m.astype(np.float32, copy=False) for m in dsp_mask_iter(S=S, sr=sr, n_fft=n_fft)])


def _separate_dsp(y: np.ndarray) -> np.ndarray:
    """[shape=(n,)] mono at ANALYSIS_SR -> [shape=(4, n)] stems."""
    import librosa

    D = librosa.stft(y, n_fft=N_FFT, hop_length=HOP_LENGTH)
    masks = dsp_masks(S=np.abs(D))
    out = np.stack([librosa.istft(m * D, hop_length=HOP_LENGTH, n_fft=N_FFT, length=len(y)) for m in masks])
    return out.astype(np.float32)


# --------------------------------------------------------------------------- demucs
_models: dict[str, Any] = {}
_failures: dict[str, str] = {}


def _import_demucs():
    # Must precede the first huggingface_hub import: it reads the variable at import.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import demucs.apply
    import demucs.pretrained

    return demucs


def _model_spec(model: Any) -> tuple[str, str, Path | None]:
    """(label, name_or_file, repo) from the argument and the environment."""
    name = model if isinstance(model, (str, os.PathLike)) and str(model) else None
    name = str(name) if name is not None else os.environ.get("EDITOR_DEMUCS_MODEL") or DEFAULT_DEMUCS_MODEL
    repo_env = os.environ.get("EDITOR_DEMUCS_REPO")
    repo = Path(repo_env) if repo_env else None
    p = Path(name)
    if p.is_dir():
        repo, name = p, os.environ.get("EDITOR_DEMUCS_MODEL") or DEFAULT_DEMUCS_MODEL
    return (p.stem if p.is_file() else name), name, repo


#: Demucs' HuggingFace namespace and repository names (demucs.hf.hf_repo_name), so the
#: HF cache can be probed without importing demucs.
_HF_NAMESPACE = "adefossez"


def _hf_repo_id(name: str) -> str:
    namespace, _, short = name.rpartition("/")
    repo = "HTDemucs" if short == "htdemucs" else (
        "HTDemucs-" + short[len("htdemucs_"):] if short.startswith("htdemucs_") else "Demucs-" + short)
    return f"{namespace or _HF_NAMESPACE}/{repo}"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _demucs_signatures(name: str) -> list[str]:
    """Model signatures of a demucs model name: the ones its bag file (demucs/remote/
    NAME.yaml) lists, or the name itself (a single model). Read from the installed
    package's files, not imported."""
    import importlib.util

    sigs = [name]
    spec = importlib.util.find_spec("demucs")  # a top-level package: found, not imported
    for root in (spec.submodule_search_locations or []) if spec else []:
        bag = Path(root) / "remote" / f"{name}.yaml"
        if bag.is_file():
            sigs += re.findall(r"[0-9a-f]{8}", bag.read_text())
    return sigs


def _weights_on_disk(name: str, repo: Path | None) -> str | None:
    """None when Demucs weights for ``name`` may be on this machine, else why not.

    Probes the file system only: importing torch and demucs to learn that no weights
    exist cost ~2 s of every cold start. Where demucs.pretrained.get_model looks:
    ``repo`` (NAME.yaml or a NAME*.th), the HuggingFace cache (models--NS--REPO), the
    torch hub cache (SIG-*.th of the model's signatures). A hit is only "maybe": the
    load itself still decides, and reports its own error.
    """
    if name == "demucs_unittest":  # built with random weights, nothing to find
        return None
    if repo is not None:
        if (repo / f"{name}.yaml").is_file() or any(repo.glob(f"{name}*.th")):
            return None
        return f"demucs model '{name}' unavailable in {repo}: no {name}.yaml or {name}*.th there"
    hf_name = name[len("hf://"):] if name.startswith("hf://") else name
    hf_cache = Path(
        os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
        or Path(os.environ.get("HF_HOME") or _cache_home() / "huggingface") / "hub"
    )
    if (hf_cache / ("models--" + _hf_repo_id(hf_name).replace("/", "--"))).is_dir():
        return None
    hub = Path(os.environ.get("TORCH_HOME") or _cache_home() / "torch") / "hub" / "checkpoints"
    if hub.is_dir() and not name.startswith("hf://"):
        for sig in _demucs_signatures(name):
            if any(hub.glob(f"{sig}-*.th")):
                return None
    return (
        f"no local weights for demucs model '{name}' (point EDITOR_DEMUCS_REPO at them; "
        "README 'Stems and Demucs weights')"
    )


def _load_demucs(model: Any, *, quiet_download: bool = False) -> tuple[Any, str]:
    """Build (model, label); raises EditorError with one line when it cannot."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model, type(model).__name__  # an nn.Module built by the caller
    label, name, repo = _model_spec(model)
    key = f"{name}|{repo}"
    if key in _models:
        return _models[key], label
    if key in _failures:
        raise EditorError(_failures[key])
    if not Path(name).is_file() and (repo is None or repo.is_dir()):
        missing = _weights_on_disk(name, repo)
        if missing is not None:  # known before torch and demucs are imported
            _failures[key] = missing
            raise EditorError(missing)
    try:
        demucs = _import_demucs()
        p = Path(name)
        if p.is_file():
            if p.suffix == ".safetensors":
                from demucs.hf import load_safetensors_model

                net = load_safetensors_model(p)
            else:
                from demucs.states import load_model

                net = load_model(p)
        else:
            if repo is not None and not repo.is_dir():
                raise EditorError(f"EDITOR_DEMUCS_REPO={repo}: not a folder")
            # demucs' legacy fallback prints "Downloading: URL" (torch.hub, on stdout)
            # before failing offline; keep that out of the console in "auto" mode.
            with contextlib.ExitStack() as quiet:
                if quiet_download:
                    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
                    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
                net = demucs.pretrained.get_model(name, repo=repo)
        net.eval()
    except EditorError as exc:
        _failures[key] = str(exc)
        raise
    except (Exception, SystemExit) as exc:  # demucs' fatal() calls sys.exit
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if repo is not None:
            _failures[key] = f"demucs model '{name}' unavailable in {repo}: {type(exc).__name__}: {msg}"
        else:  # the usual case offline: say what to do, not the socket error
            log.debug("demucs model '%s': %s: %s", name, type(exc).__name__, msg)
            _failures[key] = (
                f"no local weights for demucs model '{name}' (point EDITOR_DEMUCS_REPO at them; "
                "README 'Stems and Demucs weights')"
            )
        raise EditorError(_failures[key]) from None
    _models[key] = net
    return net, label


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _separate_demucs(audio: Audio, net: Any, label: str) -> np.ndarray:
    """Native-rate audio -> [shape=(4, n_mono)] stems at ANALYSIS_SR (STEM_NAMES order)."""
    import torch
    from demucs.apply import apply_model

    device = _device()
    _log_once(logging.INFO, "stems: %s on %s", label, device)
    y = audio.y
    n_ch = int(getattr(net, "audio_channels", 2))
    if y.shape[0] != n_ch:
        mono = to_mono(y)
        y = np.repeat(mono[None], n_ch, axis=0)  # 1 or 6 channels -> the model's count
    model_sr = int(getattr(net, "samplerate", 44100))
    y = resample(y, sr_in=audio.sr, sr_out=model_sr)
    wav = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    # demucs.separate normalises by the mixture's statistics; the model was trained so.
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std().clamp_min(1e-8)
    with torch.no_grad():
        # shifts=0: deterministic output (the cache must not depend on a random shift)
        out = apply_model(net, ((wav - mean) / std)[None], shifts=0, split=True, overlap=0.25, device=device)
    out = (out[0] * std + mean).cpu().numpy()  # (sources, channels, n)
    sources = list(net.sources)
    n = len(audio.y_mono)
    res = np.zeros((len(STEM_NAMES), n), dtype=np.float32)
    for k, stem in enumerate(STEM_NAMES):
        if stem in sources:
            s = resample(to_mono(out[sources.index(stem)]), sr_in=model_sr, sr_out=ANALYSIS_SR)
            m = min(n, len(s))
            res[k, :m] = s[:m]
    # Models with more sources (htdemucs_6s: guitar, piano) fold the rest into "other".
    for i, src in enumerate(sources):
        if src not in STEM_NAMES:
            s = resample(to_mono(out[i]), sr_in=model_sr, sr_out=ANALYSIS_SR)
            m = min(n, len(s))
            res[STEM_NAMES.index("other"), :m] += s[:m]
    return res


# --------------------------------------------------------------------------- api
def resolve_method(method: str = "auto", *, model: Any = None) -> tuple[str, Any]:
    """Decide which separator runs: returns (method label, demucs model or None).

    The label is "dsp" or "demucs:<model>"; it goes into cache keys and BeatFeatures.
    ``method="demucs"`` raises EditorError when the model cannot be loaded; ``"auto"``
    falls back to "dsp" and warns once with the reason.
    """
    if method not in METHODS:
        raise ParameterError(f"stems method must be one of {METHODS}, got {method!r}")
    if method == "dsp":
        _log_once(logging.INFO, "stems: DSP fallback (HPSS + band splits), as requested")
        return "dsp", None
    try:
        net, label = _load_demucs(model, quiet_download=method == "auto")
    except EditorError as exc:
        if method == "demucs":
            raise
        _log_once(logging.WARNING, "stems: %s; using the DSP fallback (HPSS + band splits)", exc)
        return "dsp", None
    return f"demucs:{label}", net


def separate(audio: Audio, *, method: str = "auto", model: Any = None) -> Stems:
    """Split a recording into drums, bass, vocals, other (mono, ``ANALYSIS_SR``).

    audio : a loaded recording (demucs uses its native-rate channels, dsp its mono copy)
    method : "auto" (demucs if weights are available, else dsp), "demucs" or "dsp"
    model : demucs model name, file, repo folder or built model (see module docstring)
    """
    label, net = resolve_method(method, model=model)
    arr = _separate_dsp(audio.y_mono) if net is None else _separate_demucs(audio, net, label)
    return Stems(*arr, method=label)


def stem_waveforms(audio: Audio, *, label: str, net: Any) -> np.ndarray:
    """[shape=(4, n)] stems for a method already resolved by ``resolve_method``."""
    return _separate_dsp(audio.y_mono) if net is None else _separate_demucs(audio, net, label)
