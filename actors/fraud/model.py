"""An online fraud model: scikit-learn's SGDClassifier (log loss), scored and trained in batches.

Each shard holds a replica; at every checkpoint the runtime averages the replicas
(weighted by the labels each learned from since the last sync) and hands the
average back to all of them, so the model learns from every shard's labels.

A decaying step size (``invscaling``) keeps scores from jumping on small feature
noise; SGD's default schedule did exactly that on this stream. ``eta0`` = 0.01
was stable but learned too slowly to ever alert (prequential AP 0.23); 0.2 with
a weak L2 reached AP ~0.6, on par with an offline logistic regression's 0.57.

>>> import numpy as np
>>> m = OnlineModel()
>>> m.score(np.zeros((3, N_FEATURES))).tolist()   # untrained: no opinion
[0.0, 0.0, 0.0]
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(3000, N_FEATURES)); y = X[:, 0] > 1
>>> m.learn(X, y)                                  # >= learn_rows: fitted at once
>>> bool(m.score(np.eye(N_FEATURES)[:1] * 3)[0] > 0.5)
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.state.snapshot import pack, unpack

FEATURES = (
    "log_amount",
    "amount_ratio",
    "amount_z",
    "burst",
    "distance",
    "new_device",
    "since_last",
    "has_history",
    # the rule signals are features: the model weighs them, no fixed weights OR them in
    "rule_high_amount",
    "rule_burst",
    "rule_far_location",
    "rule_new_device_high_amount",
    # interactions a linear model cannot form by itself
    "new_device_x_amount_ratio",
    "new_device_x_distance",
    "burst_x_new_device",
    # novelty: a category the customer never bought in; a device first used within the hour
    "category_new",
    "young_device",
    "category_new_x_amount_ratio",
    # fraud that lives at merchants (a compromised terminal) rather than in a profile
    "merchant_risk",
)
N_FEATURES = len(FEATURES)


@dataclass
class OnlineModel:
    eta0: float = 0.2
    alpha: float = 1e-5
    fraud_weight: float = 10.0
    #: labelled rows gathered before one partial_fit: scikit-learn's per-call checks cost
    #: ~3 ms, more than the SGD itself on the few hundred rows a live batch brings
    learn_rows: int = 2048
    #: samples after which the step size stops shrinking (eta0 / sqrt(max_t) at least)
    #: 20,000 (not 200,000): after a new fraud pattern, recall stayed ~0.9 instead of falling
    #: to ~0.84 later on, with no change on stable streams (scripts/bench_ml.py)
    max_t: float = 20_000.0

    def __post_init__(self) -> None:
        self._clf: Any = None  # made on first fit (see clf)
        #: weights read from arrays (coef, intercept, t) and not yet in a classifier
        self._restored: tuple[np.ndarray, np.ndarray, float] | None = None
        self.fitted = False
        self.version = 0
        self.learned_since_sync = 0
        self.learned_total = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._pending_rows = 0

    @property
    def clf(self) -> Any:
        """The SGDClassifier, made when first needed: importing scikit-learn costs ~0.8 s
        and ~77 MB, which a process that only scores, averages replicas or reads a model
        card (the coordinator, a replay refused from its file header) need not pay."""
        if self._clf is None:
            from sklearn.linear_model import SGDClassifier

            self._clf = SGDClassifier(
                loss="log_loss",
                learning_rate="invscaling",
                eta0=self.eta0,
                alpha=self.alpha,
                class_weight={0: 1.0, 1: self.fraud_weight},
                random_state=0,
            )
            if self._restored is not None:  # what partial_fit needs to go on where it was
                coef, intercept, t = self._restored
                self._clf.classes_ = np.array([0, 1])
                self._clf.coef_, self._clf.intercept_, self._clf.t_ = coef, intercept, t
                self._clf.n_features_in_ = N_FEATURES
                self._restored = None
        return self._clf

    def weights(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(coef (1, n), intercept (1,), step count t) of a fitted model, else None."""
        if not self.fitted:
            return None
        if self._clf is None:
            return self._restored
        return self._clf.coef_, self._clf.intercept_, float(self._clf.t_)

    def _step_count(self) -> float:
        if self._clf is not None:
            return float(getattr(self._clf, "t_", 1.0))
        return self._restored[2] if self._restored is not None else 1.0

    def score(self, X: np.ndarray) -> np.ndarray:
        """Fraud probability per row (0 until the model has seen both classes)."""
        w = self.weights()
        if w is None or len(X) == 0:
            return np.zeros(len(X))
        # predict_proba of a binary log-loss model is this sigmoid; computing it directly
        # skips scikit-learn's input checks, which cost more than the math on small batches
        z = X @ w[0][0] + w[1][0]
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def learn(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> None:
        """Learn from a labelled batch: one partial_fit once ``learn_rows`` rows are in (in
        arrival order), and before every snapshot; waits until both classes were seen."""
        if len(X) == 0:
            return
        self._pending.append((X, y.astype(np.int64), sample_weight))
        self._pending_rows += len(X)
        if self._pending_rows >= self.learn_rows:
            self.flush()

    def flush(self) -> None:
        """Fit what is gathered now."""
        if not self._pending:
            return
        X = np.concatenate([p[0] for p in self._pending])
        y = np.concatenate([p[1] for p in self._pending])
        weights = [p[2] if p[2] is not None else np.ones(len(p[0])) for p in self._pending]
        w = np.concatenate(weights)
        if not self.fitted and len(np.unique(y)) < 2:
            if self._pending_rows > 50 * self.learn_rows:  # one class only so far: keep a window
                self._pending, self._pending_rows = [], 0
            return
        self._pending, self._pending_rows = [], 0
        self.clf.partial_fit(X, y, classes=np.array([0, 1]), sample_weight=w)
        # the step size eta0 / t**0.5 would shrink for ever and freeze the model: a floor
        # keeps it learning what drifts (habits change, new fraud patterns appear)
        self.clf.t_ = min(self.clf.t_, self.max_t)
        self.fitted = True
        self.learned_since_sync += len(X)
        self.learned_total += len(X)

    def explain(self, X: np.ndarray, top: int = 3) -> list[list[str]]:
        """Per row, the features that pushed its score up most (coefficient x value > 0)."""
        w = self.weights()
        if w is None or len(X) == 0:
            return [[] for _ in range(len(X))]
        contrib = X * w[0][0]
        best = np.argsort(-contrib, axis=1)[:, :top]
        return [
            [FEATURES[j] for j in row if contrib[i, j] > 0] for i, row in enumerate(best.tolist())
        ]

    # -- a safe format: arrays and JSON, never a pickle ------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The model as plain arrays (``meta`` is JSON), after fitting what is gathered."""
        self.flush()
        meta = {
            "features": list(FEATURES),
            "eta0": self.eta0,
            "alpha": self.alpha,
            "fraud_weight": self.fraud_weight,
            "learn_rows": self.learn_rows,
            "max_t": self.max_t,
            "fitted": self.fitted,
            "version": self.version,
            "learned_since_sync": self.learned_since_sync,
            "learned_total": self.learned_total,
            "t": self._step_count(),
        }
        out = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        w = self.weights()
        if w is not None:
            out["coef"], out["intercept"] = w[0], w[1]
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> OnlineModel:
        meta = json.loads(bytes(arrays["meta"]).decode())
        if list(meta["features"]) != list(FEATURES):
            raise ValueError(f"model features {meta['features']} are not {list(FEATURES)}")
        m = cls(
            meta["eta0"], meta["alpha"], meta["fraud_weight"], meta["learn_rows"], meta["max_t"]
        )
        m.version, m.fitted = int(meta["version"]), bool(meta["fitted"])
        m.learned_since_sync, m.learned_total = meta["learned_since_sync"], meta["learned_total"]
        if m.fitted:  # into a classifier only if it learns again (see clf)
            m._restored = (
                np.array(arrays["coef"], dtype=np.float64).reshape(1, -1),
                np.array(arrays["intercept"], dtype=np.float64).reshape(1),
                float(meta["t"]),
            )
        return m

    @staticmethod
    def average_arrays(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Average fitted replicas, weighted by what each learned since the last sync."""
        models = [OnlineModel.from_arrays(p) for p in parts]
        fitted = [m for m in models if m.fitted]
        base = max(models, key=lambda m: m.version)
        if fitted:
            w = np.array([m.learned_since_sync + 1.0 for m in fitted])
            w /= w.sum()
            base = fitted[0]
            ws = [m.weights() for m in fitted]  # from arrays: plain numpy, no scikit-learn
            base._restored = (
                sum(wi * c for wi, (c, _, _) in zip(w, ws, strict=True)),
                sum(wi * i for wi, (_, i, _) in zip(w, ws, strict=True)),
                max(t for _, _, t in ws),
            )
            # each replica's total is the last synced total plus what it learned since
            synced = max(m.learned_total - m.learned_since_sync for m in models)
            base.learned_total = synced + sum(m.learned_since_sync for m in models)
            base.version = max(m.version for m in models) + 1
        base.learned_since_sync = 0
        return base.arrays()


#: the snapshot kinds of the fraud app's state (see runtime.state.snapshot)
MODEL_KIND, LOG_KIND = "fraud_model", "fraud_feature_log"


def pack_arrays(arrays: dict[str, np.ndarray], kind: str = MODEL_KIND) -> bytes:
    """Arrays as one snapshot of ``kind``: an envelope with a format version and a
    checksum around an ``.npz`` (see :mod:`runtime.state.snapshot`), never a pickle."""
    return pack(kind, {}, arrays)


def unpack_arrays(blob: bytes, kind: str = MODEL_KIND) -> dict[str, np.ndarray]:
    """What :func:`pack_arrays` wrote; :class:`~runtime.errors.SnapshotError` for anything
    else (a pickle, a bare npz of an older version, another kind, corruption)."""
    return unpack(blob, kind).arrays
