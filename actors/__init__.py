"""Domain actors and demo applications built on :mod:`runtime`."""
