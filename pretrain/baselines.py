"""Baselines for behaviour cloning, on the same replayed samples and split as the policy.

- ``MajorityBaseline``: the most frequent legal (type, size, amount) of the training set.
- ``HGBBaseline``: scikit-learn HistGradientBoosting per head on the current beat's row
  of the observation (121 features + history channels) and the globals; size and
  amount classifiers also get the type (one-hot), as the policy's heads do.
- ``D3rlpyBaseline``: d3rlpy DiscreteBC or DiscreteCQL on an MDPDataset of the same
  transitions (flat action index 0..449, reward 1 at each episode's last step: the
  expert's episodes are the ones to imitate).

Every baseline acts through the masks: its scores of masked actions are ignored, so
its actions are always legal (the comparison is then about choices, not legality).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from agent.model import N_AMOUNTS, N_SIZES, N_TYPES
from pretrain.d3rlpy_export import mdp_dataset
from pretrain.dataset import BCData

__all__ = ["current_beat_features", "MajorityBaseline", "HGBBaseline", "D3rlpyBaseline", "to_mdp_dataset", "BASELINES"]

log = logging.getLogger(__name__)

N_FLAT = N_TYPES * N_SIZES * N_AMOUNTS


def current_beat_features(obs: dict, head_index: int) -> np.ndarray:
    """[B, F + G] float32: the head row of obs["beats"] and the globals (numpy obs)."""
    beats = np.asarray(obs["beats"])
    g = np.asarray(obs["globals"])
    if beats.ndim == 2:
        beats, g = beats[None], g[None]
    return np.concatenate([beats[:, head_index], g], axis=1).astype(np.float32)


def _legal_flat(obs: dict) -> np.ndarray:
    """[B, 450] bool legality of every flat action (type-major: t*25 + s*5 + a)."""
    tm = np.asarray(obs["type_mask"]).astype(bool)
    sm = np.asarray(obs["size_mask"]).astype(bool)
    am = np.asarray(obs["amount_mask"]).astype(bool)
    if tm.ndim == 1:
        tm, sm, am = tm[None], sm[None], am[None]
    legal = tm[:, :, None, None] & sm[:, :, :, None] & am[:, :, None, :]
    return legal.reshape(len(tm), -1)


def _decode(flat: np.ndarray) -> np.ndarray:
    flat = np.asarray(flat, dtype=np.int64)
    return np.stack([flat // (N_SIZES * N_AMOUNTS), (flat // N_AMOUNTS) % N_SIZES, flat % N_AMOUNTS], axis=-1)


def _flat(actions: np.ndarray) -> np.ndarray:
    a = np.asarray(actions, dtype=np.int64)
    return a[:, 0] * N_SIZES * N_AMOUNTS + a[:, 1] * N_AMOUNTS + a[:, 2]


def _best_legal(scores: np.ndarray, legal: np.ndarray) -> np.ndarray:
    """argmax of scores [B, 450] over legal entries -> actions [B, 3]."""
    s = np.where(legal, scores, -np.inf)
    return _decode(s.argmax(1))


class MajorityBaseline:
    """Always the most frequent training action that is legal here."""

    name = "majority"

    def fit(self, data: BCData, idx: np.ndarray) -> "MajorityBaseline":
        counts = np.bincount(_flat(data.actions[idx]), minlength=N_FLAT).astype(np.float64)
        self.scores = counts + 1e-6 * np.arange(N_FLAT)[::-1]  # ties: the lower index
        return self

    def act(self, obs: dict) -> np.ndarray:
        legal = _legal_flat(obs)
        return _best_legal(np.broadcast_to(self.scores, legal.shape), legal)


class HGBBaseline:
    """HistGradientBoosting per head on the current beat's features."""

    name = "hgb"

    def __init__(self, head_index: int, *, max_iter: int = 100, min_samples_leaf: int = 5, seed: int = 0):
        self.head_index, self.max_iter, self.seed = head_index, max_iter, seed
        self.min_samples_leaf = min_samples_leaf  # sklearn's 20 is too coarse for a few songs' steps

    def _clf(self):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=self.max_iter, min_samples_leaf=self.min_samples_leaf, random_state=self.seed, early_stopping=False
        )

    def fit(self, data: BCData, idx: np.ndarray) -> "HGBBaseline":
        X = current_beat_features({"beats": data.beats[idx], "globals": data.globals[idx]}, self.head_index)
        y = data.actions[idx]
        onehot = np.eye(N_TYPES, dtype=np.float32)[y[:, 0]]
        self.heads = []
        for k, Xk in ((0, X), (1, np.concatenate([X, onehot], 1)), (2, np.concatenate([X, onehot], 1))):
            classes = np.unique(y[:, k])
            if len(classes) == 1:
                self.heads.append(("const", classes[0]))
            else:
                self.heads.append(("clf", self._clf().fit(Xk, y[:, k])))
        return self

    def _proba(self, k: int, X: np.ndarray, n: int) -> np.ndarray:
        kind, m = self.heads[k]
        P = np.zeros((len(X), n))
        if kind == "const":
            P[:, m] = 1.0
        else:
            P[:, m.classes_] = m.predict_proba(X)
        return P + 1e-9  # every legal class stays reachable

    def act(self, obs: dict) -> np.ndarray:
        X = current_beat_features(obs, self.head_index)
        B = len(X)
        tm = np.asarray(obs["type_mask"]).astype(bool).reshape(B, N_TYPES)
        sm = np.asarray(obs["size_mask"]).astype(bool).reshape(B, N_TYPES, N_SIZES)
        am = np.asarray(obs["amount_mask"]).astype(bool).reshape(B, N_TYPES, N_AMOUNTS)
        ok_t = tm & sm.any(-1) & am.any(-1)
        t = np.where(ok_t, self._proba(0, X, N_TYPES), -1).argmax(1)
        Xt = np.concatenate([X, np.eye(N_TYPES, dtype=np.float32)[t]], 1)
        b = np.arange(B)
        s = np.where(sm[b, t], self._proba(1, Xt, N_SIZES), -1).argmax(1)
        a = np.where(am[b, t], self._proba(2, Xt, N_AMOUNTS), -1).argmax(1)
        return np.stack([t, s, a], 1)


def to_mdp_dataset(data: BCData, idx: np.ndarray, head_index: int, *, mean=None, std=None):
    """d3rlpy MDPDataset of rows idx (kept in episode order): observation = standardised
    current-beat features, action = flat index, reward 1 at each episode's last step."""
    idx = np.asarray(idx)
    idx = idx[np.lexsort((data.step[idx], data.episode[idx]))]
    X = current_beat_features({"beats": data.beats[idx], "globals": data.globals[idx]}, head_index)
    if mean is None:
        mean, std = X.mean(0), X.std(0) + 1e-3
    X = (X - mean) / std
    ep = data.episode[idx]
    last = np.r_[ep[1:] != ep[:-1], True]
    ds = mdp_dataset(X.astype(np.float32), _flat(data.actions[idx]).reshape(-1, 1),
                     last.astype(np.float32).reshape(-1, 1), last.astype(np.float32))
    return ds, mean, std


class D3rlpyBaseline:
    """d3rlpy DiscreteBC ("bc") or DiscreteCQL ("cql") on the current beat's features."""

    def __init__(self, kind: str, head_index: int, *, n_steps: int = 3000, seed: int = 0, device: str = "cpu:0"):
        if kind not in ("bc", "cql"):
            raise ValueError(f"kind must be bc or cql, got {kind!r}")
        self.kind, self.head_index, self.n_steps, self.seed, self.device = kind, head_index, n_steps, seed, device
        self.name = f"d3rlpy_{kind}"

    def fit(self, data: BCData, idx: np.ndarray) -> "D3rlpyBaseline":
        import d3rlpy

        d3rlpy.seed(self.seed)
        ds, self.mean, self.std = to_mdp_dataset(data, idx, self.head_index)
        if self.kind == "bc":
            algo = d3rlpy.algos.DiscreteBCConfig(batch_size=64, learning_rate=1e-3).create(device=self.device)
        else:
            algo = d3rlpy.algos.DiscreteCQLConfig(batch_size=64, learning_rate=3e-4, target_update_interval=500, alpha=1.0).create(
                device=self.device
            )
        algo.fit(
            ds, n_steps=self.n_steps, n_steps_per_epoch=self.n_steps, show_progress=False, save_interval=10**9,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        )
        self.algo = algo
        return self

    @torch.no_grad()
    def scores(self, X: np.ndarray) -> np.ndarray:
        """[B, 450] action scores: imitator logits (BC) or Q-values (CQL)."""
        x = torch.as_tensor((X - self.mean) / self.std, dtype=torch.float32, device=self.algo.impl.device)
        impl = self.algo.impl
        if self.kind == "bc":
            out = impl._modules.imitator(x).logits
        else:
            out = impl._q_func_forwarder.compute_expected_q(x)
        return out.cpu().numpy()

    def act(self, obs: dict) -> np.ndarray:
        X = current_beat_features(obs, self.head_index)
        return _best_legal(self.scores(X), _legal_flat(obs))


BASELINES = ("majority", "hgb", "d3rlpy_bc", "d3rlpy_cql")
