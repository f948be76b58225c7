"""Operators built on entity kinds: keyed windows (``windowed``), stream-stream joins
(``joins``) and stream-state enrichment (``enrich``)."""
