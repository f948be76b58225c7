"""A drift monitor for a scoring stage: a PSI on the scores (and on named feature
columns) and a Page-Hinkley test on the prequential error, returning drift events as
plain dicts, at most one per detector per batch and none within ``cooldown`` events of
that detector's last one.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> mon = DriftMonitor(cooldown=50_000)
>>> events = []
>>> for i in range(10):
...     scores = rng.beta(2, 8, 10_000) if i < 5 else rng.beta(5, 5, 10_000)
...     events += mon.update(scores, errors=None, at=i * 10_000)
>>> [(e["detector"], e["signal"]) for e in events]
[('psi', 'score')]
>>> events[0]["at"] >= 50_000
True
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from runtime.ml.drift import PSI, PageHinkley, State

__all__ = ["DriftMonitor"]


class DriftMonitor:
    """A PSI on the scores (and on named feature columns, created on first sight) and
    a Page-Hinkley on the prequential error of labelled events.

    ``update(scores, features, errors, at)`` returns drift events
    ``{"detector": "psi" | "page_hinkley", "signal": "score" | "feature:<name>" |
    "error", "value", "threshold", "at"}``: at most one per detector per batch, and
    none within ``cooldown`` events after the last one of that detector. ``at`` is the
    stream offset of the batch's first event (default: the scores seen so far); a PSI
    event is at the batch's last score, a Page-Hinkley event at ``at`` plus its index
    in ``errors``. ``psi`` and ``page_hinkley`` are keyword arguments for the detectors;
    ``score_edges`` / ``feature_edges`` fix bin edges (else reference quantiles).
    """

    def __init__(
        self,
        psi_threshold: float = 0.2,
        cooldown: int = 50_000,
        psi: dict | None = None,
        page_hinkley: dict | None = None,
        score_edges=None,
        feature_edges: dict[str, Any] | None = None,
    ):
        self.psi_threshold = float(psi_threshold)
        self.cooldown = int(cooldown)
        self.psi_kwargs = dict(psi or {})
        self.ph_kwargs = dict(page_hinkley or {})
        self.feature_edges = {
            k: np.asarray(v, dtype=np.float64) for k, v in (feature_edges or {}).items()
        }
        self.score = PSI(edges=score_edges, **self.psi_kwargs)
        self.features: dict[str, PSI] = {}
        self.errors = PageHinkley(**self.ph_kwargs)
        self.next_allowed: dict[str, int] = {}  # "<detector>:<signal>" -> stream offset
        self.n_seen = 0

    def _psi_for(self, name: str) -> PSI:
        if name not in self.features:
            self.features[name] = PSI(edges=self.feature_edges.get(name), **self.psi_kwargs)
        return self.features[name]

    def _fire(self, out: list, detector: str, signal: str, value: float, thr: float, at: int):
        key = f"{detector}:{signal}"
        if at < self.next_allowed.get(key, -(1 << 62)):
            return False
        self.next_allowed[key] = at + self.cooldown
        out.append(
            {"detector": detector, "signal": signal, "value": value, "threshold": thr, "at": at}
        )
        return True

    def update(
        self,
        scores,
        features: dict[str, np.ndarray] | None = None,
        errors: np.ndarray | None = None,
        at: int | None = None,
    ) -> list[dict]:
        scores = np.asarray(scores, dtype=np.float64).ravel()
        at = self.n_seen if at is None else int(at)
        self.n_seen += scores.size
        end = at + max(scores.size - 1, 0)
        out: list[dict] = []
        if scores.size:
            v = self.score.update(scores)
            if v >= self.psi_threshold:
                self._fire(out, "psi", "score", v, self.psi_threshold, end)
        for name, col in (features or {}).items():
            v = self._psi_for(name).update(col)
            if v >= self.psi_threshold:
                self._fire(out, "psi", f"feature:{name}", v, self.psi_threshold, end)
        if errors is not None and self.errors.update(errors):
            thr = self.errors.threshold
            for p, v in zip(self.errors.positions, self.errors.values, strict=True):
                if self._fire(out, "page_hinkley", "error", v, thr, at + p):
                    break  # the first one out of the cool-down
        return out

    def state(self) -> State:
        d: State = {
            "kind": "DriftMonitor",
            "psi_threshold": self.psi_threshold,
            "cooldown": self.cooldown,
            "psi_kwargs": json.dumps(self.psi_kwargs),
            "ph_kwargs": json.dumps(self.ph_kwargs),
            "feature_edges": json.dumps({k: v.tolist() for k, v in self.feature_edges.items()}),
            "features": json.dumps(sorted(self.features)),
            "next_allowed": json.dumps(self.next_allowed),
            "n_seen": self.n_seen,
        }
        parts = {"score/": self.score, "error/": self.errors}
        parts.update({f"feature/{k}/": p for k, p in self.features.items()})
        for prefix, det in parts.items():
            d.update({prefix + k: v for k, v in det.state().items()})
        return d

    @classmethod
    def from_state(cls, d: State) -> DriftMonitor:
        self = cls(
            psi_threshold=float(d["psi_threshold"]),
            cooldown=int(d["cooldown"]),
            psi=json.loads(str(d["psi_kwargs"])),
            page_hinkley=json.loads(str(d["ph_kwargs"])),
            feature_edges=json.loads(str(d["feature_edges"])),
        )

        def sub(prefix: str) -> State:
            return {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}

        self.score = PSI.from_state(sub("score/"))
        self.errors = PageHinkley.from_state(sub("error/"))
        for name in json.loads(str(d["features"])):
            self.features[name] = PSI.from_state(sub(f"feature/{name}/"))
        self.next_allowed = {k: int(v) for k, v in json.loads(str(d["next_allowed"])).items()}
        self.n_seen = int(d["n_seen"])
        return self
