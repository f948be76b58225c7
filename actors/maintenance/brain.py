"""The models a shard scores with, and how replicas meet at the core.

Every shard (at its edge) holds a :class:`Brain`: the online classifier it learns from its
own devices' failures, the isolation forest it was shipped, and the healthy windows it
confirmed since the last sync. At each sync and checkpoint the runtime hands all shards'
snapshots to :meth:`Brain.merge` at the core: classifier replicas are averaged (weighted
by what each learned), healthy-window statistics and samples are pooled, and, once enough
healthy windows are pooled, the isolation forest is fitted (again) there. The merged
snapshot goes back to every shard and into the model registry as a new version.

A snapshot is an ``.npz`` of arrays with a JSON header: nothing in it is ever executed.

>>> import numpy as np
>>> a, b = Brain(3), Brain(3)
>>> a.add_healthy(np.ones((700, 3))); b.add_healthy(np.zeros((700, 3)))
>>> merged = Brain.from_bytes(Brain.merge([a.to_bytes(), b.to_bytes()]))
>>> merged.version, merged.forest is not None, int(merged.clf.stats[0, 0])
(1, True, 1400)
"""

from __future__ import annotations

import numpy as np

from actors.maintenance.model import Forest, RiskClassifier, pack, unpack

FORMAT = "edgecore.maintenance.brain/1"


class Brain:
    """Classifier, forest and healthy samples of one shard (or the merged whole)."""

    def __init__(
        self,
        n_features: int,
        min_fit: int = 1000,
        reservoir: int = 20_000,
        quantile: float = 0.9995,
        margin: float = 0.03,
    ) -> None:
        self.n_features = n_features
        self.clf = RiskClassifier(n_features)
        self.forest: Forest | None = None
        self.threshold = 1.0  # forest score at which its risk is 0.5
        self.forest_rows = 0
        self.version = 0
        self.min_fit, self.reservoir, self.quantile, self.margin = (
            min_fit,
            reservoir,
            quantile,
            margin,
        )
        self.base = np.zeros((0, n_features))  # pooled healthy samples as of the last sync
        self.fresh: list[np.ndarray] = []  # confirmed healthy here since
        self.at_sync = (np.zeros((3, n_features)), 0, 0)  # stats, positives, learned

    # -- scoring ---------------------------------------------------------------------------
    def detector_risk(self, X: np.ndarray) -> np.ndarray:
        """The forest's verdict as a risk in [0, 1]: 0.5 at the calibrated threshold."""
        if self.forest is None or len(X) == 0:
            return np.zeros(len(X))
        s = self.forest.score(X)
        return 1.0 / (1.0 + np.exp(-np.clip((s - self.threshold) / 0.01, -50, 50)))

    def add_healthy(self, X: np.ndarray) -> None:
        """Windows confirmed healthy (no failure within the horizon after them)."""
        if len(X):
            self.clf.observe_healthy(X)
            kept = sum(len(f) for f in self.fresh)
            if kept < self.reservoir:
                self.fresh.append(X[: self.reservoir - kept].copy())

    # -- the wire format -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        stats0, pos0, learned0 = self.at_sync
        fresh = np.concatenate(self.fresh) if self.fresh else np.zeros((0, self.n_features))
        arrays = {
            **self.clf.arrays(),
            "stats0": stats0,
            "base": self.base,
            "fresh": fresh,
            **(self.forest.arrays() if self.forest is not None else {}),
        }
        meta = {
            "format": FORMAT,
            "version": self.version,
            "n_features": self.n_features,
            "clf": self.clf.meta(),
            "at_sync": [pos0, learned0],
            "threshold": self.threshold,
            "forest_rows": self.forest_rows,
            "min_fit": self.min_fit,
            "reservoir": self.reservoir,
            "quantile": self.quantile,
            "margin": self.margin,
        }
        return pack(arrays, meta)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Brain:
        """Read a snapshot; ``ValueError`` for anything that is not one."""
        try:
            a, meta = unpack(blob)
        except (OSError, KeyError, UnicodeDecodeError) as err:
            raise ValueError(f"not a maintenance model snapshot: {err}") from err
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a maintenance model snapshot (format {meta.get('format')!r})")
        f = int(meta["n_features"])
        b = cls(f, meta["min_fit"], meta["reservoir"], meta["quantile"], meta["margin"])
        b.clf = RiskClassifier.from_arrays(a, meta["clf"], f)
        b.forest = Forest.from_arrays(a)
        b.version, b.threshold = int(meta["version"]), float(meta["threshold"])
        b.forest_rows = int(meta["forest_rows"])
        b.base = np.asarray(a["base"], dtype=np.float64).reshape(-1, f)
        fresh = np.asarray(a["fresh"], dtype=np.float64).reshape(-1, f)
        b.fresh = [fresh] if len(fresh) else []
        b.at_sync = (np.asarray(a["stats0"], dtype=np.float64), *map(int, meta["at_sync"]))
        return b

    # -- at the core -----------------------------------------------------------------------
    @staticmethod
    def merge(blobs: list[bytes]) -> bytes:
        """Pool the shards' snapshots into one model version (see the module docstring)."""
        parts = [Brain.from_bytes(b) for b in blobs]
        out = max(parts, key=lambda p: p.version)
        stats0, pos0, learned0 = out.at_sync
        d_learned = [p.clf.learned - p.at_sync[2] for p in parts]
        clf = out.clf
        if sum(d_learned) > 0:
            w = np.array(d_learned, dtype=np.float64) + 1e-9
            w /= w.sum()
            for name in ("W", "b", "G", "Gb"):
                setattr(
                    clf,
                    name,
                    sum(wi * getattr(p.clf, name) for wi, p in zip(w, parts, strict=True)),
                )
        clf.stats = stats0 + sum(p.clf.stats - p.at_sync[0] for p in parts)
        clf.positives = pos0 + sum(p.clf.positives - p.at_sync[1] for p in parts)
        clf.learned = learned0 + sum(d_learned)
        fresh = [f for p in parts for f in p.fresh]
        changed = bool(fresh) or sum(d_learned) > 0
        pool = np.concatenate([out.base, *fresh])[-out.reservoir :]
        out.base, out.fresh = pool, []
        refit = len(pool) >= out.min_fit and (
            out.forest is None or len(pool) >= 1.3 * out.forest_rows
        )
        if refit:
            out.forest = Forest.fit(pool, seed=out.version)
            scores = out.forest.score(pool)
            out.threshold = float(np.quantile(scores, out.quantile)) + out.margin
            out.forest_rows = len(pool)
        if changed or refit:
            out.version += 1
        out.at_sync = (clf.stats.copy(), clf.positives, clf.learned)
        return out.to_bytes()

    def card(self) -> dict:
        """What the model registry records of this version."""
        return {
            "version": self.version,
            "parent": None,
            "training_rows": int(self.clf.learned),
            "metrics": {
                "failure_windows_learned": int(self.clf.positives),
                "healthy_windows": int(self.clf.stats[0, 0]),
                "forest_rows": self.forest_rows,
                "forest_threshold": round(self.threshold, 4),
            },
            "parameters": {**self.clf.meta(), "quantile": self.quantile, "margin": self.margin},
        }
