"""Edit every song in a folder: ``python -m agent.batch FOLDER`` (``make infer INPUT=folder/``).

    python -m agent.batch jams/                          # newest checkpoint under runs/
    python -m agent.batch jams/ --jobs 2 --target-duration 180
    RAY_ADDRESS=auto python -m agent.batch /shared/jams --checkpoint /shared/ppo_last.pt

Each audio file ``FOLDER/NAME.ext`` is edited exactly as ``python -m agent.infer`` edits
one song (the same options, one checkpoint for the whole batch), into ``OUT/NAME/``
(default ``OUT``: ``runs/infer/<folder name>``), on ``--jobs`` local processes or as Ray
tasks (``--backend ray`` or ``RAY_ADDRESS`` set; datasets.parallel). ``OUT/index.html``
links every song's report page and lists the songs that failed.

A song that fails is named in one ``error:`` line and the others finish; the exit status
is then 2. A killed batch resumes: a song whose ``OUT/NAME/NAME.batch.json`` (written
last, atomically) records the same song bytes, checkpoint bytes and options, and whose
outputs all exist, is not edited again.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import logging
import os
import sys
import time
from pathlib import Path
from urllib.parse import quote

from datasets.atomic import atomic_write_json, atomic_write_text
from datasets.errors import EditorError, ParameterError
from datasets.safety import refuse_overwrite

__all__ = ["main", "edit_one", "song_files", "write_index"]

log = logging.getLogger("agent.batch")

#: What libsndfile reads (datasets.features' list of a folder's audio files).
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff", ".w64")
MARKER_SUFFIX = ".batch.json"


def song_files(folder: Path) -> list[Path]:
    """The audio files directly in ``folder`` (not in subfolders, no hidden files), sorted."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in AUDIO_EXTS and f.is_file() and not f.name.startswith("."))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _marker(out_dir: Path, song: Path) -> Path:
    return out_dir / f"{song.stem}{MARKER_SUFFIX}"


def _key(song: Path, checkpoint_sha: str, options: list[str]) -> dict:
    """What an edit depends on: the song's bytes, the checkpoint's bytes, the options."""
    return {"input_sha256": _sha256(song), "checkpoint_sha256": checkpoint_sha, "options": list(options)}


def _done(marker: Path, key: dict) -> dict | None:
    """The recorded summary when ``marker`` holds ``key`` and every output it lists exists."""
    try:
        rec = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("key") != key or not all(Path(p).exists() for p in rec.get("files", [])):
        return None
    return rec.get("summary")


def _worker_init() -> None:
    # one BLAS thread per song before torch is imported: the pool already uses the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def edit_one(song: str, out_dir: str, checkpoint: str, checkpoint_sha: str, options: list[str]) -> dict:
    """Worker: edit one song into ``out_dir`` (agent.infer.run) unless its marker says it is
    done; returns ``{"song", "report", "summary", "cached"}``. Raises EditorError naming
    the song when it cannot be edited."""
    from agent.infer import get_parser, output_paths, run

    src, out = Path(song), Path(out_dir)
    key = _key(src, checkpoint_sha, options)
    marker = _marker(out, src)
    args = get_parser().parse_args([song, "--checkpoint", checkpoint, "--out", out_dir, *options])
    paths = output_paths(args)
    report = paths["report"]
    cached = _done(marker, key)
    if cached is not None:
        return {"song": song, "report": str(report), "summary": cached, "cached": True}
    summary = run(args)
    files = [str(p) for p in paths.values() if p.exists()]
    atomic_write_json(marker, {"key": key, "files": files, "summary": summary})  # last: the song is done
    return {"song": song, "report": str(report), "summary": summary, "cached": False}


def write_index(path: Path, rows: list[dict], *, title: str) -> Path:
    """``index.html``: one row per song, linking its report (relative links, so the folder
    can be moved or opened from disk), and the failed songs with their error."""
    out = path.parent.resolve()
    lines = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}.err{color:#b00}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        f"<p>{sum('error' not in r for r in rows)} of {len(rows)} songs edited.</p>",
        "<table><tr><th>song</th><th>duration in</th><th>duration out</th><th>keep ratio</th><th>edit id</th></tr>",
    ]
    for r in rows:
        name = html.escape(Path(r["song"]).name)
        if "error" in r:
            lines.append(f'<tr class="err"><td>{name}</td><td colspan="4">failed: {html.escape(r["error"])}</td></tr>')
            continue
        s = r["summary"]
        href = quote(os.path.relpath(Path(r["report"]).resolve(), out).replace(os.sep, "/"))
        cells = "".join(f"<td>{html.escape(str(s.get(k, '')))}</td>" for k in ("duration in", "duration out", "keep ratio", "edit id"))
        lines.append(f'<tr><td><a href="{href}">{name}</a></td>{cells}</tr>')
    lines += ["</table>", "</body></html>", ""]
    return atomic_write_text(path, "\n".join(lines))


def get_parser() -> argparse.ArgumentParser:
    from datasets.parallel import add_backend_args

    p = argparse.ArgumentParser(
        prog="python -m agent.batch",
        description="Edit every song in a folder with a trained policy (agent.infer's options apply to each).",
        epilog="Other options (--target-duration, --keep-ratio, --sample, --seed, --format, --crossfade-ms, --device, "
               "--no-cache, --no-end-fade) are agent.infer's and apply to every song.",
    )
    p.add_argument("input", help="folder of raw recordings (wav, flac, ogg, opus, mp3)")
    p.add_argument("--checkpoint", help="policy checkpoint (.pt); default: the newest under --newest-in")
    p.add_argument("--newest-in", default="runs", help="folder searched for the newest checkpoint (default: runs)")
    p.add_argument("--out", help="output folder: OUT/NAME/ per song and OUT/index.html (default: runs/infer/<folder name>)")
    add_backend_args(p, jobs_default=1)
    return p


def _plan(args: argparse.Namespace, options: list[str]) -> tuple[list[Path], Path, Path]:
    """Check everything before any song is edited: (songs, checkpoint, output folder)."""
    from agent.infer import get_parser as infer_parser
    from agent.infer import newest_checkpoint

    src = Path(args.input)
    if not src.is_dir():
        raise ParameterError(f"{src}: not a folder (edit one song with python -m agent.infer SONG)")
    if "--output" in options or any(o.startswith("--output=") for o in options):
        raise ParameterError("--output names one song's file; a batch writes OUT/NAME/ per song (use --out)")
    songs = song_files(src)
    if not songs:
        raise EditorError(f"{src}: no audio files ({', '.join(AUDIO_EXTS)}) in this folder")
    ip = infer_parser()
    ip.prog = "python -m agent.batch"
    ip.parse_args([str(songs[0]), *options])  # a bad option stops here, with argparse's one line, before any work
    ckpt = Path(args.checkpoint) if args.checkpoint else newest_checkpoint(args.newest_in)
    if not ckpt.is_file():
        raise EditorError(f"{ckpt}: checkpoint not found")
    out = Path(args.out) if args.out else Path("runs") / "infer" / src.resolve().name
    seen: dict[str, Path] = {}
    for s in songs:  # NAME.wav and NAME.flac would write over each other's edit in OUT/NAME/
        if s.stem in seen:
            raise ParameterError(f"{s} and {seen[s.stem]}: two songs named {s.stem!r} would share {out / s.stem}; rename one")
        seen[s.stem] = s
    refuse_overwrite([], [src, ckpt, *songs], folders=[out])  # the song folder is never written
    return songs, ckpt, out


def main(argv: list[str] | None = None) -> int:
    args, options = get_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from tqdm import tqdm

    from datasets.parallel import run_items

    t0 = time.perf_counter()
    try:
        songs, ckpt, out = _plan(args, options)
        ckpt_sha = _sha256(ckpt)
        items = [(str(s), str(out / s.stem), str(ckpt), ckpt_sha, options) for s in songs]
        outcomes = run_items(edit_one, items, names=[str(s) for s in songs], jobs=args.jobs, backend=args.backend,
                             initializer=_worker_init)
        rows: list[dict] = [{} for _ in songs]
        for o in tqdm(outcomes, total=len(songs), desc="infer", unit="song"):
            rows[o.index] = o.value if o.ok else {"song": o.name, "error": o.error}
            if not o.ok:  # said now, so a long batch shows it at once (tqdm keeps its bar below)
                tqdm.write(f"error: {o.error if o.name in o.error else f'{o.name}: {o.error}'}", file=sys.stderr)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    index = write_index(out / "index.html", rows, title=f"Edits of {Path(args.input).resolve().name}")
    failed = [r for r in rows if "error" in r]
    cached = sum(bool(r.get("cached")) for r in rows)
    print(f"{len(rows) - len(failed)}/{len(rows)} songs edited ({cached} already done) in {time.perf_counter() - t0:.1f} s -> {index}")
    if failed:
        print(f"error: {len(failed)} song(s) failed: {', '.join(Path(r['song']).name for r in failed)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
