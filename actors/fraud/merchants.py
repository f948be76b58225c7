"""Merchant risk: the labelled fraud rate of the merchant an event is at, as a model feature.

Per-customer features cannot see fraud that lives at merchants: a compromised terminal
charges customers on their own cards and devices, at their usual amounts. What gives it
away is the merchant's recent labelled fraud rate. :class:`MerchantRisk` keeps, per
merchant (hashed into :data:`BUCKETS` buckets), decayed counts of labelled frauds and of
labelled events, learned from the same labels as the model, *when they are known* (late
labels update it late). The feature is the log of the merchant's smoothed fraud rate
over the overall rate: 0 for a merchant like the rest (or one with few labels), up for a
merchant whose labels turn fraudulent.

Like the model, every shard keeps a replica; the runtime merges them at each sync (a
shared ``base`` plus each replica's ``delta``), so a merchant's labels from all shards
count everywhere.

>>> import numpy as np
>>> risk = MerchantRisk()
>>> b = np.array([1, 2] * 5_000)
>>> risk.observe(b, np.arange(10_000) % 4 == 1)   # merchant 2: half its labels fraud
>>> f = risk.feature(np.array([1, 2, 3]))
>>> bool(f[0] < 0 < f[1]), float(f[2])
(True, 0.0)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from runtime.state.keys import hash_keys

BUCKETS = 1 << 15
PRIOR = 30.0  # labelled events a merchant needs before its own rate outweighs the overall
SCALE = 1.0  # log-ratio units: a merchant 10x the overall rate gives 2.3


def buckets_of(merchant_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each merchant id's bucket (a hash: the same id, the same bucket, on every shard)."""
    return (hash_keys(merchant_ids) % np.uint64(BUCKETS)).astype(np.int64)


class MerchantRisk:
    def __init__(self, half_life: float = 500_000.0) -> None:
        #: labels after which old evidence counts half (a merchant fixed stops looking risky)
        self.half_life = half_life
        self.base = np.zeros((2, BUCKETS))  # [frauds, labelled] per bucket
        self.delta = np.zeros((2, BUCKETS))

    def feature(self, buckets: np.ndarray) -> np.ndarray:
        """log(smoothed merchant fraud rate / overall rate) / SCALE, clipped to [-2, 3]."""
        h = self.base + self.delta
        frauds, n = h[0], h[1]
        total = n.sum()
        if total < 1_000 or frauds.sum() <= 0:
            return np.zeros(len(buckets))
        rate = frauds.sum() / total
        own = (frauds[buckets] + PRIOR * rate) / (n[buckets] + PRIOR)
        return np.clip(np.log(own / rate) / SCALE, -2.0, 3.0)

    def observe(self, buckets: np.ndarray, labels: np.ndarray) -> None:
        """Labels now known, at these merchants' buckets."""
        if not len(buckets):
            return
        fade = 0.5 ** (len(buckets) / self.half_life)
        self.base *= fade
        self.delta *= fade
        self.delta[0] += np.bincount(buckets[labels], minlength=BUCKETS)
        self.delta[1] += np.bincount(buckets, minlength=BUCKETS)

    # -- replicas ---------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {"mr_base": self.base.astype(np.float32), "mr_delta": self.delta.astype(np.float32)}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        if "mr_base" in arrays:  # a snapshot from before merchant risk: start empty
            self.base = np.array(arrays["mr_base"], dtype=np.float64)
            self.delta = np.array(arrays["mr_delta"], dtype=np.float64)

    @staticmethod
    def merged(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Replicas that started from the same base: bases averaged, deltas added."""
        got = [p for p in parts if "mr_base" in p]
        if not got:
            return {}
        base = sum(np.asarray(p["mr_base"], np.float64) for p in got) / len(got)
        new = sum(np.asarray(p["mr_delta"], np.float64) for p in got)
        return {
            "mr_base": (base + new).astype(np.float32),
            "mr_delta": np.zeros_like(base, np.float32),
        }
