"""Worker processes that die with their parent.

Why: a parent killed with SIGKILL (the OOM killer, ``kill -9``, a closed laptop's
session) runs no cleanup, and a forked worker that waits on a pipe or queue whose other
end it inherited itself never sees end-of-file: it lives on with PPID 1, holding its
memory, forever (issue 13: PPO's rollout worker kept 1.37 GB; ``alignment.run --jobs 2``
left both pool workers). So every process we start calls ``die_with_parent`` first:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (prctl(2)): the kernel kills the child when
  its parent ends, however it ends. The parent may already have died between the fork
  and the prctl call (then no signal ever comes), so the child checks right after that
  its parent is still the one that started it, and exits otherwise.
- elsewhere (or if prctl fails): a daemon thread polls ``os.getppid()`` every
  ``_POLL_SECONDS`` and ends the process when the parent changed.

Caveat (prctl(2)): on Linux "parent" is the *thread* that started the child. Start
pools and workers from a thread that outlives them (our CLIs use the main thread).

Use: ``ProcessPoolExecutor(max_workers=n, **pool_kwargs(initializer=f, initargs=a))``,
``Process(target=child_call, args=(os.getpid(), target, *args))``, or call
``die_with_parent(parent_pid)`` first thing in a worker's entry function.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["die_with_parent", "child_call", "pool_kwargs"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_SECONDS = 0.5  # fallback watchdog: an orphan lives at most this long


def _set_pdeathsig() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) on Linux; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watchdog(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_POLL_SECONDS)
    os._exit(1)  # the parent is gone: no cleanup is owed to anyone


def die_with_parent(parent_pid: int) -> None:
    """End this process when process ``parent_pid`` (the one that started it) ends.

    parent_pid : ``os.getpid()`` of the parent, taken in the parent before the child
        starts (a forked child cannot learn it afterwards once the parent is gone)
    Exits at once (status 1) when the parent is already gone.
    """
    if _set_pdeathsig():
        if os.getppid() != parent_pid:  # died before the prctl: the signal will never come
            os._exit(1)
        return
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watchdog, args=(parent_pid,), name="die-with-parent", daemon=True).start()


def child_call(parent_pid: int, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``die_with_parent(parent_pid)``, then ``target(*args, **kwargs)``: a process target
    (``multiprocessing.Process``, gymnasium's ``AsyncVectorEnv(worker=...)`` with
    ``functools.partial(child_call, os.getpid(), worker)``). Module-level, so it pickles
    for the spawn start method."""
    die_with_parent(parent_pid)
    return target(*args, **kwargs)


def _pool_init(parent_pid: int, initializer: Callable[..., Any] | None, initargs: Sequence[Any]) -> None:
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def pool_kwargs(initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = ()) -> dict[str, Any]:
    """``initializer`` / ``initargs`` for ``ProcessPoolExecutor`` (or ``multiprocessing.Pool``)
    whose workers die with this process, then run ``initializer(*initargs)`` (a
    module-level function, so that it pickles). Call it in the process that creates the
    pool: it records that process's pid."""
    return {"initializer": _pool_init, "initargs": (os.getpid(), initializer, tuple(initargs))}
