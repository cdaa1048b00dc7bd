"""bench/cold.py measures the fresh process it starts, not the benchmark itself.

Linux reports a child's peak RSS as at least its parent's RSS at the fork; the benchmark
holds songs and a policy in memory, so a child forked from it would look as large. The
launcher it runs commands under keeps each child's figures its own.
"""

from __future__ import annotations

import sys

import numpy as np

from bench import cold


def test_child_peak_and_cpu_are_the_childs_own():
    ballast = np.ones(300 * 2**20 // 8)  # this process: +300 MB resident
    small = cold.run_process([sys.executable, "-c", "print('hi')"], env={})
    assert small.rc == 0 and small.stdout.strip() == "hi"
    assert small.peak_mb < 100, small.peak_mb  # not the parent's 300 MB
    big = cold.run_process(
        [sys.executable, "-c", "import numpy as np, time; a = np.ones(200 * 2**20 // 8); t = time.process_time()\n"
         "while time.process_time() - t < 0.3: pass"],
        env={},
    )
    assert big.rc == 0
    assert 200 <= big.peak_mb < 290, big.peak_mb
    assert big.cpu >= 0.3 and big.wall >= big.cpu * 0.5, (big.cpu, big.wall)
    failed = cold.run_process([sys.executable, "-c", "raise SystemExit(3)"], env={})
    assert failed.rc == 3
    del ballast


def test_infer_timer_line_is_parsed():
    out = "keep ratio  0.64\ntime        checkpoint 0.05 s, load 0.33 s, beats+features 2.16 s, total 4.09 s\n"
    assert cold._infer_times(out) == {"checkpoint": 0.05, "load": 0.33, "beats+features": 2.16, "total": 4.09}
