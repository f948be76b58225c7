"""Domain actors and demo applications built on :mod:`runtime`, one package per app:
``fraud`` (card-fraud detection), ``devices`` (predictive maintenance at the edge) and
``nexmark`` (the NEXMark benchmark's stream and queries)."""
