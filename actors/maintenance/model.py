"""The risk models: an online classifier learned from observed failures, and an isolation
forest fitted at the core on healthy windows, both plain arrays (never a pickle).

:class:`RiskClassifier` is a logistic regression per horizon (fails within 6, 12, 24 h),
trained by AdaGrad in numpy from windows labelled when their device fails (positives:
the windows within the horizon before it) or when the horizon passes without a failure
(negatives). Inputs are standardised by running statistics of healthy windows.

:class:`Forest` is a scikit-learn ``IsolationForest`` flattened to its trees' arrays
(children, feature, threshold, node sizes) and scored with numpy: it flags windows
unlike any healthy one, for failure modes never seen failing.

>>> rng = np.random.default_rng(0)
>>> healthy = rng.normal(size=(2000, 3))
>>> f = Forest.fit(healthy, seed=0)
>>> from sklearn.ensemble import IsolationForest
>>> ref = IsolationForest(n_estimators=50, max_samples=256, random_state=0).fit(healthy)
>>> probe = rng.normal(size=(100, 3)) * 2
>>> bool(np.allclose(f.score(probe), -ref.score_samples(probe)))
True
>>> bool(f.score(np.array([[8.0, 8.0, 8.0]]))[0] > f.score(np.zeros((1, 3)))[0])
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.state import snapshot

HORIZONS_H = (6.0, 12.0, 24.0)
_EULER = 0.5772156649015329


#: the snapshot kind of the maintenance model (see runtime.state.snapshot)
MODEL_KIND = "maintenance_model"


def pack(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    """Arrays plus a JSON header as one snapshot: an envelope with a format version and a
    checksum around an ``.npz`` (see :mod:`runtime.state.snapshot`), never a pickle."""
    return snapshot.pack(MODEL_KIND, meta, arrays)


def unpack(blob: bytes) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of what :func:`pack` wrote; :class:`~runtime.errors.SnapshotError`
    for anything else."""
    state = snapshot.unpack(blob, MODEL_KIND)
    return dict(state.arrays), state.meta


def _path_length(n: np.ndarray) -> np.ndarray:
    """Average path length of an unsuccessful search in a binary tree of ``n`` points."""
    n = np.asarray(n, dtype=np.float64)
    big = 2.0 * (np.log(np.maximum(n - 1.0, 1.0)) + _EULER) - 2.0 * (n - 1.0) / np.maximum(n, 1.0)
    return np.where(n <= 1, 0.0, np.where(n == 2, 1.0, big))


@dataclass
class Forest:
    """An isolation forest as arrays: all trees' nodes concatenated, ``roots`` their starts."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    size: np.ndarray
    roots: np.ndarray
    max_samples: int
    depth: int

    @classmethod
    def fit(cls, X: np.ndarray, seed: int = 0, trees: int = 50, max_samples: int = 256) -> Forest:
        """Fit scikit-learn's IsolationForest on ``X`` and keep only its trees' arrays."""
        from sklearn.ensemble import IsolationForest

        m = min(max_samples, len(X))
        est = IsolationForest(n_estimators=trees, max_samples=m, random_state=seed).fit(X)
        parts, roots, off = [], [], 0
        for tree in est.estimators_:
            t = tree.tree_
            shift = lambda c, o=off: np.where(c >= 0, c + o, -1)  # noqa: E731
            parts.append(
                (
                    shift(t.children_left),
                    shift(t.children_right),
                    t.feature,
                    t.threshold,
                    t.n_node_samples,
                )
            )
            roots.append(off)
            off += t.node_count
        cat = [np.concatenate([p[i] for p in parts]) for i in range(5)]
        return cls(
            cat[0].astype(np.int64),
            cat[1].astype(np.int64),
            cat[2].astype(np.int64),
            cat[3].astype(np.float64),
            cat[4].astype(np.int64),
            np.array(roots, np.int64),
            int(est.max_samples_),
            int(max(t.tree_.max_depth for t in est.estimators_)),
        )

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1) per row (scikit-learn's ``-score_samples``): ~0.5 and
        below is ordinary, towards 1 isolated."""
        if len(X) == 0:
            return np.zeros(0)
        x = X.astype(np.float32).astype(np.float64)  # the trees split on float32 values
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        depth = np.zeros(node.shape)
        rows = np.arange(len(x))[:, None]
        for _ in range(self.depth):
            inner = self.left[node] >= 0
            if not inner.any():
                break
            f = np.maximum(self.feature[node], 0)
            go_left = x[rows, f] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
            depth += inner
        mean = (depth + _path_length(self.size[node])).mean(axis=1)
        return 2.0 ** (-mean / _path_length(np.array(self.max_samples)))

    def arrays(self, prefix: str = "forest_") -> dict[str, np.ndarray]:
        return {
            f"{prefix}{k}": getattr(self, k)
            for k in ("left", "right", "feature", "threshold", "size", "roots")
        } | {f"{prefix}shape": np.array([self.max_samples, self.depth], np.int64)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str = "forest_") -> Forest | None:
        if f"{prefix}roots" not in a:
            return None
        ms, depth = (int(v) for v in a[f"{prefix}shape"])
        get = lambda k, t: np.asarray(a[f"{prefix}{k}"], dtype=t)  # noqa: E731
        f = cls(
            get("left", np.int64),
            get("right", np.int64),
            get("feature", np.int64),
            get("threshold", np.float64),
            get("size", np.int64),
            get("roots", np.int64),
            ms,
            depth,
        )
        n = len(f.left)
        if not (len(f.right) == len(f.feature) == len(f.threshold) == len(f.size) == n):
            raise ValueError("forest arrays of different lengths")
        if n and (f.left.max() >= n or f.right.max() >= n or f.roots.max(initial=0) >= n):
            raise ValueError("forest node index out of range")
        return f


@dataclass
class RiskClassifier:
    """Logistic regression per horizon, on standardised features, learned by AdaGrad."""

    n_features: int
    lr: float = 0.05
    l2: float = 1e-4
    pos_weight: float = 4.0
    epochs: int = 3
    W: np.ndarray = field(init=False)
    b: np.ndarray = field(init=False)
    G: np.ndarray = field(init=False)
    Gb: np.ndarray = field(init=False)
    #: running statistics of healthy windows: count, sum, sum of squares
    stats: np.ndarray = field(init=False)
    positives: int = 0  # positive windows learned (at the 24 h horizon)
    learned: int = 0

    def __post_init__(self) -> None:
        h, f = len(HORIZONS_H), self.n_features
        self.W, self.b = np.zeros((h, f)), np.full(h, -4.0)
        self.G, self.Gb = np.full((h, f), 1e-6), np.full(h, 1e-6)
        self.stats = np.zeros((3, f))

    @property
    def fitted(self) -> bool:
        """Scores only after it learned from a few failures (two dozen positive windows)."""
        return self.positives >= 24

    def standardize(self, X: np.ndarray) -> np.ndarray:
        n = max(self.stats[0, 0], 1.0)
        mu = self.stats[1] / n
        sd = np.sqrt(np.maximum(self.stats[2] / n - mu * mu, 0.0)) + 1e-3
        return np.clip((X - mu) / sd, -10.0, 10.0)

    def observe_healthy(self, X: np.ndarray) -> None:
        if len(X):
            self.stats += np.stack(
                [np.ones(len(X)) @ np.ones((len(X), X.shape[1])), X.sum(0), (X * X).sum(0)]
            )

    def proba(self, X: np.ndarray) -> np.ndarray:
        """P(fails within each horizon) per row, shape (rows, horizons), made monotone."""
        if not self.fitted or len(X) == 0:
            return np.zeros((len(X), len(HORIZONS_H)))
        z = self.standardize(X) @ self.W.T + self.b
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        return np.maximum.accumulate(p, axis=1)  # within 6 h implies within 12 h

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per row and feature: what it adds to the 24 h log-odds."""
        return self.standardize(X) * self.W[-1]

    def learn(self, X: np.ndarray, tte_h: np.ndarray) -> None:
        """Learn from windows with their time to failure in hours (inf: none within any horizon)."""
        if len(X) == 0:
            return
        Z = self.standardize(X)
        Y = (tte_h[:, None] < np.array(HORIZONS_H)[None, :]).astype(np.float64)
        w = np.where(Y[:, -1] > 0, self.pos_weight, 1.0)
        self.positives += int(Y[:, -1].sum())
        self.learned += len(X)
        for _ in range(self.epochs):
            for lo in range(0, len(Z), 256):
                z, y, ww = Z[lo : lo + 256], Y[lo : lo + 256], w[lo : lo + 256]
                p = 1.0 / (1.0 + np.exp(-np.clip(z @ self.W.T + self.b, -50, 50)))
                err = (p - y) * ww[:, None]
                gW = err.T @ z / len(z) + self.l2 * self.W
                gb = err.mean(0)
                self.G += gW * gW
                self.Gb += gb * gb
                self.W -= self.lr * gW / np.sqrt(self.G)
                self.b -= self.lr * gb / np.sqrt(self.Gb)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "b": self.b, "G": self.G, "Gb": self.Gb, "stats": self.stats}

    def meta(self) -> dict:
        return {
            "positives": self.positives,
            "learned": self.learned,
            "lr": self.lr,
            "l2": self.l2,
            "pos_weight": self.pos_weight,
            "epochs": self.epochs,
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], meta: dict, n_features: int) -> RiskClassifier:
        m = cls(n_features, meta["lr"], meta["l2"], meta["pos_weight"], meta["epochs"])
        shapes = {
            "W": m.W.shape,
            "b": m.b.shape,
            "G": m.G.shape,
            "Gb": m.Gb.shape,
            "stats": m.stats.shape,
        }
        for k, shape in shapes.items():
            v = np.asarray(a[k], dtype=np.float64)
            if v.shape != shape:
                raise ValueError(f"classifier array {k} has shape {v.shape}, expected {shape}")
            setattr(m, k, v.copy())
        m.positives, m.learned = int(meta["positives"]), int(meta["learned"])
        return m
