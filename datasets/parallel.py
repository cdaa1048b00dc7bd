"""Run a per-song function over many songs: the local process pool, or Ray tasks.

Why: alignment, feature extraction and batch inference do the same thing to every song,
independently. On a laptop a pool of ``--jobs`` processes is the right tool and costs
nothing to start; a studio with thousands of pairs wants the same work spread over a
cluster. One function, :func:`run_items`, serves both, so every stage has one code path
and the same outputs either way (each item's result comes from the same function on the
same arguments; only where it runs differs).

Backends (``--backend``, :func:`resolve_backend`):

- ``pool`` (the default unless ``RAY_ADDRESS`` is set): ``jobs`` local worker processes
  that die with this one (datasets.procs); ``jobs == 1`` (or a single item) runs in this
  process. Ray is never imported on this path: no start-up cost, no dependency at run time.
- ``ray``: one Ray task per item (1 CPU each). ``RAY_ADDRESS=local``, or ``--backend ray``
  without ``RAY_ADDRESS``, starts a local Ray instance with ``jobs`` CPUs (``ray.init``),
  so the cluster path is testable on one machine; any other ``RAY_ADDRESS`` (``auto`` on a
  cluster node, ``HOST:6379``, ``ray://HOST:10001``) joins that cluster, whose CPUs set the
  parallelism. Every node must see the project checkout, the virtual environment and the
  data at the same paths as this process (a shared filesystem): tasks read the songs and
  write their outputs by path, and run in this process's working directory with its
  ``EDITOR_*`` settings (the feature cache folder among them).

Failures: an exception in one item (or a worker that dies) becomes that item's
:class:`Outcome` with a one-line ``error``; the other items finish. The caller reports
the failed items and sets the exit status. Outcomes arrive in completion order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.errors import EditorError, ParameterError

__all__ = ["BACKENDS", "Outcome", "resolve_backend", "add_backend_args", "run_items", "start_ray"]

BACKENDS = ("auto", "pool", "ray")

#: Environment variables a Ray task inherits from the driver: the project's own settings
#: (feature cache folder, Demucs weights) and the offline switch of the model hub
#: (datasets.stems: ``get_model`` hangs on network retries without it).
_FORWARDED_PREFIXES = ("EDITOR_",)
_FORWARDED = ("HF_HUB_OFFLINE",)

_ROOT = Path(__file__).resolve().parents[1]  # the project checkout: tasks import from it


@dataclass(frozen=True)
class Outcome:
    """One item's result: ``value`` (what the function returned) or ``error`` (one line)."""

    index: int  # position of the item in the ``items`` given to run_items
    name: str  # the item's name (a file or pair name), for messages
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def resolve_backend(backend: str = "auto") -> str:
    """``"pool"`` or ``"ray"``: ``auto`` is ``ray`` exactly when ``RAY_ADDRESS`` is set."""
    if backend not in BACKENDS:
        raise ParameterError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "ray" if os.environ.get("RAY_ADDRESS") else "pool"
    return backend


def add_backend_args(parser, *, jobs_default: int) -> None:
    """``--jobs N`` and ``--backend auto|pool|ray`` on a CLI's argparse parser."""
    parser.add_argument(
        "--jobs", type=int, default=jobs_default,
        help=f"songs processed at once on the local pool, and the CPUs of a local Ray instance (default {jobs_default})",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="pool: local processes; ray: Ray tasks (RAY_ADDRESS=local or unset starts a local instance, "
             "else joins that cluster); auto (default): ray when RAY_ADDRESS is set, else pool",
    )


def _one_line(exc: BaseException) -> str:
    """The first line of the message; a crash (not an EditorError, whose message names
    the file and the problem) also says what kind of exception it was."""
    text = str(exc).strip().splitlines()
    if isinstance(exc, EditorError) and text:
        return text[0]
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_items(
    fn: Callable[..., Any],
    items: Sequence[tuple],
    *,
    names: Sequence[str] | None = None,
    jobs: int = 1,
    backend: str = "auto",
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
) -> Iterator[Outcome]:
    """Yield ``fn(*item)`` for every item, as each finishes, on the chosen backend.

    fn : a module-level function (it is pickled to the workers)
    items : the argument tuples, one per song
    names : one name per item for the messages (default: the item's first argument)
    jobs : int >= 1: local pool workers, or the CPUs of a local Ray instance
    backend : ``auto``, ``pool`` or ``ray`` (:func:`resolve_backend`)
    initializer : run once in each worker before its first item (logging setup)

    Raises ParameterError for a bad ``jobs``/``backend`` and EditorError when Ray is
    asked for but cannot start; never for a failing item.
    """
    if jobs < 1:
        raise ParameterError(f"--jobs must be >= 1, got {jobs}")
    kind = resolve_backend(backend)
    names = [str(it[0]) for it in items] if names is None else [str(n) for n in names]
    if len(names) != len(items):
        raise ParameterError(f"{len(names)} names for {len(items)} items")
    if not items:
        return iter(())
    if kind == "ray":
        ray, started = _ray_init(jobs)  # now, so that a bad RAY_ADDRESS fails before any work
        return _run_ray(ray, started, fn, items, names, initializer, initargs)
    return _run_pool(fn, items, names, jobs, initializer, initargs)


def _single_threaded(fn, *args):
    """``fn(*args)`` with one BLAS/OpenMP thread, on every backend and in-process alike: the
    last bits of a BLAS product depend on its thread count, and the same song must give the
    same labels whichever backend ran it (Ray starts its workers with OMP_NUM_THREADS=1; a
    forked pool worker inherits its parent's thread pools). One thread per song is also what
    a pool of one worker per core wants."""
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency; ~10 ms to import

    with threadpool_limits(limits=1):
        return fn(*args)


# ------------------------------------------------------------------------- local pool
def _run_pool(fn, items, names, jobs, initializer, initargs) -> Iterator[Outcome]:
    if jobs == 1 or len(items) == 1:
        if initializer is not None:
            initializer(*initargs)
        for i, it in enumerate(items):
            try:
                yield Outcome(i, names[i], value=_single_threaded(fn, *it))
            except Exception as exc:  # one song's crash must not stop the others
                yield Outcome(i, names[i], error=_one_line(exc))
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from datasets.procs import pool_kwargs  # workers die with this process

    with ProcessPoolExecutor(max_workers=min(jobs, len(items)), **pool_kwargs(initializer, initargs)) as pool:
        futs = {pool.submit(_single_threaded, fn, *it): i for i, it in enumerate(items)}
        for f in as_completed(futs):
            i = futs[f]
            try:
                yield Outcome(i, names[i], value=f.result())
            except Exception as exc:  # incl. BrokenProcessPool when a worker died
                yield Outcome(i, names[i], error=_one_line(exc))


# ------------------------------------------------------------------------- Ray
_initialised: set[tuple] = set()  # initializers already run in this (worker) process


def _ray_call(cwd: str, fn, args: tuple, initializer, initargs: tuple) -> tuple[bool, Any]:
    """The Ray task: in the driver's working directory (relative paths and the default
    cache folder mean the same as on the driver), run the initializer once per worker,
    then ``fn(*args)``. Errors come back as one line, not a remote traceback."""
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    try:
        if initializer is not None and (initializer, initargs) not in _initialised:
            initializer(*initargs)
            _initialised.add((initializer, initargs))
        return True, _single_threaded(fn, *args)
    except Exception as exc:
        return False, _one_line(exc)


def _ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES) or k in _FORWARDED}
    # one BLAS/OpenMP thread per task (Ray runs one task per CPU); _single_threaded makes
    # sure of it on every backend
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _ray_init(jobs: int):
    try:
        import ray
    except ImportError:
        raise ParameterError("--backend ray (or RAY_ADDRESS) needs Ray: run `make setup` (ray is in requirements.txt)") from None
    address = os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": _ray_env()}, "logging_level": "WARNING", "log_to_driver": True}
    if address == "local":  # our own instance, sized like the pool; no dashboard (start-up time)
        kwargs |= {"num_cpus": jobs, "include_dashboard": False}
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, ValueError: the address names no cluster
            raise EditorError(f"RAY_ADDRESS={address}: cannot start or join Ray ({_one_line(exc)})") from None
    return ray, started


def start_ray(jobs: int):
    """Start or join Ray by ``run_items``'s rule (``RAY_ADDRESS``; unset or ``local``: a
    local instance of ``jobs`` CPUs), for callers that run Ray actors of their own (PPO's
    rollout workers, rl/worker.py). Returns (the ray module, whether this call started or
    joined it: the caller then ends it with ``ray.shutdown()``)."""
    return _ray_init(jobs)


def _run_ray(ray, started: bool, fn, items, names, initializer, initargs) -> Iterator[Outcome]:
    try:
        task = ray.remote(num_cpus=1)(_ray_call)
        cwd = os.getcwd()
        refs = {task.remote(cwd, fn, tuple(it), initializer, tuple(initargs)): i for i, it in enumerate(items)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = refs[ref]
                try:
                    ok, value = ray.get(ref)
                except Exception as exc:  # the worker died (OOM killer, segfault) after Ray's retries
                    ok, value = False, _one_line(exc)
                yield Outcome(i, names[i], value=value) if ok else Outcome(i, names[i], error=value)
    finally:
        if started:
            ray.shutdown()  # our instance (or our connection) ends with the batch
