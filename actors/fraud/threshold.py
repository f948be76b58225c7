"""Alert thresholds chosen from the live score distribution, not fixed by hand.

A fixed threshold tuned on one stream is wrong on the next: the score distribution
moves with the fraud rate, the customers and the model itself. :class:`Calibrator`
keeps decayed histograms of scores (in logit space, so the high end, where alerts
are decided, has resolution): of every scored event, and of labelled frauds and
labelled non-frauds. From them it picks the lowest threshold whose estimated
precision meets the target (most recall for the precision asked), and while too few
labels are known, the threshold that keeps alerts within a budget per 10,000 events.

Shards each keep a calibrator; the runtime merges them like the model replicas: a
shared ``base`` (what the last merge agreed on) plus each shard's ``delta`` since.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> cal = Calibrator()
>>> y = rng.random(200_000) < 0.01
>>> score = np.where(y, rng.beta(8, 2, y.size), rng.beta(1, 30, y.size))
>>> cal.observe(score, y, np.ones(y.size, dtype=bool))
>>> th = cal.threshold(target_precision=0.9, budget_per_10k=50)
>>> alert = score >= th
>>> bool((y & alert).sum() / alert.sum() >= 0.88), bool((y & alert).sum() / y.sum() > 0.5)
(True, True)
"""

from __future__ import annotations

import numpy as np

Z_LO, Z_HI, BINS = -14.0, 14.0, 560
WIDTH = (Z_HI - Z_LO) / BINS
ALL, POS, NEG = 0, 1, 2


def bins_of(score: np.ndarray) -> np.ndarray:
    """The histogram bin of each score (logit scale, clipped to the range)."""
    p = np.clip(score, 1e-12, 1.0 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    return np.clip(((z - Z_LO) / WIDTH).astype(np.int64), 0, BINS - 1)


def score_at(k: int) -> float:
    """The lowest score that falls in bin ``k``: alerting at it alerts bins >= k."""
    return float(1.0 / (1.0 + np.exp(-(Z_LO + k * WIDTH)))) if k > 0 else 0.0


#: coarse score bins (logit 0.1 wide) for a run's prequential AUC, summed as counters
AUC_BINS, AUC_LO, AUC_HI = 200, -10.0, 10.0


def auc_counters(score: np.ndarray, labels: np.ndarray, known: np.ndarray) -> dict[str, int]:
    """A batch's labelled scores as sparse bin counters (``auc+:k``, ``auc-:k``): summed over
    batches and shards, :func:`auc_of` turns them into the run's AUC."""
    p = np.clip(score, 1e-12, 1.0 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    b = np.clip(((z - AUC_LO) / (AUC_HI - AUC_LO) * AUC_BINS).astype(np.int64), 0, AUC_BINS - 1)
    out: dict[str, int] = {}
    for sign, mask in (("+", known & labels), ("-", known & ~labels)):
        counts = np.bincount(b[mask], minlength=AUC_BINS)
        for k in np.flatnonzero(counts).tolist():
            out[f"auc{sign}:{k}"] = int(counts[k])
    return out


def auc_of(counters: dict[str, float]) -> float | None:
    """ROC AUC from :func:`auc_counters` sums (ties within a bin count half); None without
    both classes.

    >>> import numpy as np
    >>> s = np.array([0.1, 0.2, 0.8, 0.9]); y = np.array([False, False, True, True])
    >>> auc_of(auc_counters(s, y, np.ones(4, dtype=bool)))
    1.0
    """
    pos, neg = np.zeros(AUC_BINS), np.zeros(AUC_BINS)
    for key, v in counters.items():
        if key.startswith("auc+:"):
            pos[int(key[5:])] += v
        elif key.startswith("auc-:"):
            neg[int(key[5:])] += v
    return auc_from(pos, neg)


def auc_from(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """ROC AUC of score histograms over the same bins (ties within a bin count half)."""
    if not pos.sum() or not neg.sum():
        return None
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


class Calibrator:
    """Decayed score histograms (all, fraud, not fraud) and the threshold they imply."""

    def __init__(self, half_life: float = 200_000.0, min_support: int = 30) -> None:
        #: events after which old evidence counts half (tracks drift without forgetting)
        self.half_life = half_life
        #: labelled frauds above a threshold needed before its precision is trusted
        self.min_support = min_support
        self.base = np.zeros((3, BINS))
        self.delta = np.zeros((3, BINS))
        # decayed label delay: [seconds summed, labels], shared like the histograms
        self.delay_base = np.zeros(2)
        self.delay_delta = np.zeros(2)

    def observe(
        self, score: np.ndarray, labels: np.ndarray | None, known: np.ndarray | None
    ) -> None:
        """Scores of a batch (all of them), and the labels known for some."""
        b = bins_of(score)
        # old evidence fades as events come (a drifting stream moves the threshold)
        fade = 0.5 ** (len(score) / self.half_life)
        self.base *= fade
        self.delta *= fade
        self.delay_base *= fade
        self.delay_delta *= fade
        self.delta[ALL] += np.bincount(b, minlength=BINS)
        if labels is not None and known is not None and known.any():
            self.observe_labels(score[known], labels[known])

    def observe_labels(
        self, score: np.ndarray, labels: np.ndarray, delay_ms: np.ndarray | None = None
    ) -> None:
        """Labels known now, with the scores their events got (whenever they were scored)
        and how long after the event each label came."""
        b = bins_of(score)
        self.delta[POS] += np.bincount(b[labels], minlength=BINS)
        self.delta[NEG] += np.bincount(b[~labels], minlength=BINS)
        if delay_ms is not None and len(delay_ms):
            self.delay_delta += (float(np.sum(delay_ms)) / 1000.0, len(delay_ms))

    def threshold(self, target_precision: float | None, budget_per_10k: float) -> float:
        """The lowest threshold meeting ``target_precision`` once enough frauds are labelled;
        else the one that alerts about ``budget_per_10k`` of every 10,000 events; 0.5 before
        anything was seen."""
        h = self.base + self.delta
        tail = np.cumsum(h[:, ::-1], axis=1)[:, ::-1]  # counts at or above each bin
        if target_precision is not None and tail[POS, 0] >= self.min_support:
            flagged = tail[POS] + tail[NEG]
            with np.errstate(invalid="ignore", divide="ignore"):
                precision = np.where(flagged > 0, tail[POS] / flagged, 0.0)
            ok = np.flatnonzero((precision >= target_precision) & (tail[POS] >= self.min_support))
            if len(ok):
                return score_at(int(ok[0]))
        total = tail[ALL, 0]
        if total < 1_000:
            return 0.5
        within = np.flatnonzero(tail[ALL] <= total * budget_per_10k / 10_000)
        return score_at(int(within[0])) if len(within) else 1.0

    def metrics(self, threshold: float) -> dict[str, float | None]:
        """What the (decayed) labelled scores say of the model: ROC AUC, and precision and
        recall at ``threshold``; None where too few frauds are labelled to tell."""
        h = self.base + self.delta
        pos, neg = h[POS], h[NEG]
        if pos.sum() < self.min_support or neg.sum() == 0:
            return {
                "auc": None,
                "precision": None,
                "recall": None,
                "labelled_frauds": float(pos.sum()),
                **self.rates(threshold),
            }
        auc = auc_from(pos, neg) or 0.0
        k = int(bins_of(np.array([threshold]))[0])
        tp, fp = pos[k:].sum(), neg[k:].sum()
        return {
            "auc": round(auc, 4),
            "precision": round(float(tp / (tp + fp)), 4) if tp + fp else None,
            "recall": round(float(tp / pos.sum()), 4),
            "labelled_frauds": round(float(pos.sum()), 1),
            **self.rates(threshold),
        }

    def rates(self, threshold: float) -> dict[str, float | None]:
        """Alerts per 10,000 scored events at ``threshold``, and the mean label delay (s)."""
        h = self.base + self.delta
        k = int(bins_of(np.array([threshold]))[0])
        total = h[ALL].sum()
        seconds, n = self.delay_base + self.delay_delta
        return {
            "alerts_per_10k": round(float(h[ALL, k:].sum() / total * 10_000), 2) if total else None,
            "label_delay_s": round(float(seconds / n), 1) if n >= 1 else None,
        }

    # -- merging shard replicas ----------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "cal_base": self.base,
            "cal_delta": self.delta,
            "cal_delay_base": self.delay_base,
            "cal_delay_delta": self.delay_delta,
        }

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        self.base = np.array(arrays["cal_base"], dtype=np.float64)
        self.delta = np.array(arrays["cal_delta"], dtype=np.float64)
        self.delay_base = np.array(arrays.get("cal_delay_base", np.zeros(2)), dtype=np.float64)
        self.delay_delta = np.array(arrays.get("cal_delay_delta", np.zeros(2)), dtype=np.float64)

    @classmethod
    def merged(cls, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """One calibration from replicas that started from the same base: each faded it by
        the events it saw, so the bases are averaged; every replica's delta is added."""
        out = {}
        for name, size in (("cal", (3, BINS)), ("cal_delay", (2,))):
            got = [p for p in parts if f"{name}_base" in p]
            if not got:
                continue
            base = sum(np.asarray(p[f"{name}_base"], np.float64) for p in got) / len(got)
            new = sum(np.asarray(p.get(f"{name}_delta", np.zeros(size)), np.float64) for p in got)
            out[f"{name}_base"], out[f"{name}_delta"] = base + new, np.zeros(size)
        return out
