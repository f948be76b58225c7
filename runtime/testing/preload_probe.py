"""A module nothing imports: the shard test sees a kind's ``preload`` import it."""

LOADED = True
