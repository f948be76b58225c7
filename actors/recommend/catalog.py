"""The synthetic commerce world's settings and product catalog (see
:mod:`actors.recommend.generator` for the customers and the event stream).

Products belong to latent *themes* (a few hundred: "camping", "espresso at home", ...):
a theme spans a few categories and its products are complementary, so they are bought
together. A product's embedding is ``normalize(theme centre + category direction +
noise)``: products of one theme lie near each other, and near the customers who like
that theme. Popularity is Zipf-like over products (ranks shuffled), so a few products are
bought by everyone and a popularity baseline is not trivially bad.

Products are drawn in fixed chunks of ``2**16``, each from its own seeded RNG, in float32:
a catalog of 1M products builds in seconds, with the embedding (256 MB) the only big array.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.errors import ConfigError

# fmt: off
CATEGORIES = (
    "books", "music", "movies", "games", "toys", "baby", "kitchen", "home_decor", "furniture",
    "garden", "tools", "automotive", "sports", "outdoor", "fitness", "fashion_women",
    "fashion_men", "shoes", "jewelry", "beauty", "health", "grocery", "pet", "office",
    "computers", "phones", "audio", "cameras", "appliances", "crafts",
)
# fmt: on
_CHUNK = 1 << 16  # internal generation unit: the output never depends on how it is read
_THEME_CATS = 3  # categories a theme spans; most of its products are in one of them
_CAT_WEIGHT = 0.35  # category direction in a product embedding (theme centre has norm 1)
_NOISE = 0.7  # norm of the product's own noise: within-theme variety a customer can prefer


@dataclass(frozen=True)
class CommerceConfig:
    """The world and stream parameters; everything random derives from ``seed``."""

    n_products: int = 100_000
    n_customers: int = 20_000
    n_themes: int = 300
    dim: int = 64
    product_zipf: float = 1.0  # product popularity weight 1/(rank + offset)**s, ranks shuffled
    # Zipf-Mandelbrot offset; default n_products/2000 (>= 1): a top-10 that is a small, real
    # share of purchases, not half of them
    product_zipf_offset: float | None = None
    theme_zipf: float = 0.7  # how unevenly customers' interests spread over themes
    out_of_stock: float = 0.05  # share of products with stock 0 (viewed, never carted)
    popularity_bias: float = 0.2  # mean share of a customer's picks from global popularity
    mean_slots: float = 6.0  # products viewed per session (geometric)
    cart_rate: float = 0.2  # a viewed in-stock product is added to the cart
    buy_rate: float = 0.67  # a carted product is bought at the session's checkout
    switch_rate: float = 0.15  # per view: the session moves to another of the customer's themes
    drift_step: float = 0.05  # norm of a customer's taste step per chunk (random walk)
    session_interval_ms: float = 24 * 3600 * 1000  # mean time between a customer's sessions
    mean_gap_ms: float | None = None  # mean gap between events; default from the above
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    seed: int = 7

    def __post_init__(self) -> None:
        if min(self.n_products, self.n_customers, self.n_themes, self.dim) < 1:
            raise ConfigError("n_products, n_customers, n_themes and dim must be at least 1")
        if self.n_themes > self.n_products:
            raise ConfigError(f"n_themes ({self.n_themes}) must be <= n_products")
        rates = (self.out_of_stock, self.popularity_bias, self.cart_rate, self.buy_rate)
        if not all(0.0 <= r <= 1.0 for r in (*rates, self.switch_rate)):
            raise ConfigError("rates and shares must be in [0, 1]")
        if self.mean_slots < 1 or self.drift_step < 0 or self.session_interval_ms <= 0:
            raise ConfigError("mean_slots must be >= 1, drift_step >= 0, intervals > 0")
        if self.product_zipf_offset is None:
            object.__setattr__(self, "product_zipf_offset", max(1.0, self.n_products / 2000))
        if self.mean_gap_ms is None:
            per_session = self.mean_slots * (1 + self.cart_rate * (1 + self.buy_rate))
            gap = self.session_interval_ms / (self.n_customers * per_session)
            object.__setattr__(self, "mean_gap_ms", gap)
        if self.mean_gap_ms <= 0 or self.product_zipf_offset < 1:
            raise ConfigError("mean_gap_ms must be > 0 and product_zipf_offset >= 1")


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32 in, float32 out)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ids(prefix: str, values: np.ndarray) -> pa.Array:
    """``prefix`` + each integer as text, vectorized: ``ids("p", [3]) -> ["p3"]``."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(values), pa.string()), "")


class Catalog:
    """The products as numpy arrays (``theme``, ``category``, ``price``, ``stock``,
    ``embedding``, ``popularity``), the theme centres, and samplers the stream uses.

    >>> cat = Catalog(CommerceConfig(n_products=2_000, n_themes=40, dim=16))
    >>> cat.embedding.shape, cat.embedding.dtype, int((cat.stock >= 0).sum())
    ((2000, 16), dtype('float32'), 2000)
    >>> t = cat.table()
    >>> t.column_names, t.column("product_id")[5].as_py()
    (['product_id', 'category', 'price', 'stock', 'embedding'], 'p5')
    """

    def __init__(self, config: CommerceConfig = CommerceConfig()) -> None:  # noqa: B008 (frozen)
        self.config = cfg = config
        n, n_cat = cfg.n_products, len(CATEGORIES)
        rng = np.random.default_rng([cfg.seed, 0])
        self.centres = _unit(rng.standard_normal((cfg.n_themes, cfg.dim), np.float32))
        cat_dirs = _unit(rng.standard_normal((n_cat, cfg.dim), np.float32))
        theme_cats = np.argsort(rng.random((cfg.n_themes, n_cat)), axis=1)[:, :_THEME_CATS]
        cat_median = rng.lognormal(np.log(30.0), 0.9, n_cat)  # books cheap, appliances not
        # popularity: Zipf weights over shuffled ranks
        self.popularity = (rng.permutation(n) + cfg.product_zipf_offset) ** -cfg.product_zipf
        self.theme = np.empty(n, np.int64)
        self.category = np.empty(n, np.int64)
        self.price = np.empty(n)
        self.stock = np.empty(n, np.int64)
        self.embedding = np.empty((n, cfg.dim), np.float32)
        for idx, lo in enumerate(range(0, n, _CHUNK)):
            crng = np.random.default_rng([cfg.seed, 10, idx])
            sl = slice(lo, min(n, lo + _CHUNK))
            k = sl.stop - lo
            theme = crng.integers(0, cfg.n_themes, k)
            first = np.arange(lo, sl.stop) < cfg.n_themes  # every theme gets a product
            theme[first] = np.arange(lo, sl.stop)[first]
            # mostly one of the theme's own categories, sometimes any (a tent's cookbook)
            own = theme_cats[theme, crng.integers(0, _THEME_CATS, k)]
            cat = np.where(crng.random(k) < 0.85, own, crng.integers(0, n_cat, k))
            noise = crng.standard_normal((k, cfg.dim), np.float32) * (
                _NOISE / cfg.dim**0.5
            )  # python float: stays float32
            emb = self.centres[theme] + _CAT_WEIGHT * cat_dirs[cat] + noise
            self.embedding[sl] = _unit(emb)
            self.theme[sl], self.category[sl] = theme, cat
            self.price[sl] = np.maximum(
                np.round(cat_median[cat] * crng.lognormal(0.0, 0.5, k), 2), 0.5
            )
            self.stock[sl] = np.where(crng.random(k) < cfg.out_of_stock, 0, crng.geometric(0.02, k))
        # sampling: global popularity CDF, and per-theme CDFs laid end to end as
        # theme + within-theme CDF (monotonic), so one searchsorted samples inside any theme
        self._pop_cdf = np.cumsum(self.popularity) / self.popularity.sum()
        # products by theme, the most popular first: a draw inside a theme is an O(1) rank
        self.by_theme = np.lexsort((-self.popularity, self.theme))
        self._theme_count = np.bincount(self.theme, minlength=cfg.n_themes)
        self._theme_start = np.cumsum(self._theme_count) - self._theme_count
        # theme popularity for customers' interests: Zipf over shuffled theme ranks
        tw = (rng.permutation(cfg.n_themes) + 1.0) ** -cfg.theme_zipf
        self.theme_weight = tw / tw.sum()
        self.product_ids = ids("p", np.arange(n))
        self.categories = pa.array(CATEGORIES, pa.string())

    def sample_popular(self, u: np.ndarray) -> np.ndarray:
        """Products drawn by global popularity, for uniforms ``u`` in [0, 1)."""
        return np.minimum(np.searchsorted(self._pop_cdf, u, side="right"), len(self._pop_cdf) - 1)

    def sample_in_theme(self, theme: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Products of ``theme`` (broadcast against ``u``), the more popular the likelier.

        The rank inside the theme is ``count * u**2``: P(rank < r) = sqrt(r / count), a
        density like r**-0.5 - popular products lead, but a theme of a global top product
        still offers the rest (global Zipf weights inside a theme would not).
        """
        rank = (self._theme_count[theme] * u * u).astype(np.int64)
        return self.by_theme[self._theme_start[theme] + rank]

    def table(self) -> pa.Table:
        """The catalog as Arrow: the embedding is a zero-copy ``fixed_size_list<float32>``."""
        emb = pa.FixedSizeListArray.from_arrays(pa.array(self.embedding.ravel()), self.config.dim)
        return pa.table(
            {
                "product_id": self.product_ids,
                "category": self.categories.take(pa.array(self.category)),
                "price": pa.array(self.price),
                "stock": pa.array(self.stock),
                "embedding": emb,
            }
        )


def catalog_table(config: CommerceConfig = CommerceConfig()) -> pa.Table:  # noqa: B008 (frozen)
    """The product catalog of ``config`` (``product_id``, ``category``, ``price``, ``stock``,
    unit-norm ``embedding``).

    >>> t = catalog_table(CommerceConfig(n_products=1_000, n_themes=20, dim=8))
    >>> t.num_rows, str(t.schema.field("embedding").type)
    (1000, 'fixed_size_list<item: float>[8]')
    """
    return Catalog(config).table()
