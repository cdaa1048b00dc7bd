"""The observation layout the agent was built for, read from envs/observation.py.

Checkpoints store it (feature names, channel names, window, head row, globals) so that a
model is never fed observations of another feature configuration without a clear error.
"""

from __future__ import annotations

from typing import Mapping

from datasets.errors import ParameterError

__all__ = ["observation_layout", "check_layout"]


def observation_layout() -> dict:
    """Plain-typed description of the current observation (only str/int/list values)."""
    from datasets.features import FEATURE_NAMES
    from envs import observation as ob

    return {
        "feature_names": list(FEATURE_NAMES),
        "channel_names": list(ob.BEAT_CHANNELS),
        "global_names": list(ob.GLOBAL_NAMES),
        "n_features": len(FEATURE_NAMES),
        "n_channels": int(ob.N_BEAT_CHANNELS),
        "n_globals": int(ob.N_GLOBALS),
        "window": int(ob.WINDOW),
        "head_index": int(ob.HEAD_INDEX),
    }


def check_layout(saved: Mapping, current: Mapping, *, source: str) -> None:
    """Raise ParameterError naming the first difference between two layouts."""
    for key in ("n_features", "n_channels", "n_globals", "window", "head_index"):
        if saved.get(key) != current.get(key):
            raise ParameterError(
                f"{source}: observation {key}={saved.get(key)} but this code has {current.get(key)}; "
                "the checkpoint was trained on another feature configuration"
            )
    for key in ("feature_names", "channel_names", "global_names"):
        a, b = list(saved.get(key, [])), list(current.get(key, []))
        if a != b:
            diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            got = a[diff] if diff < len(a) else "<none>"
            want = b[diff] if diff < len(b) else "<none>"
            raise ParameterError(
                f"{source}: {key}[{diff}] is {got!r} in the checkpoint but {want!r} here; "
                "the checkpoint was trained on another feature configuration"
            )
