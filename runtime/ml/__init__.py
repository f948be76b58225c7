"""Machine learning primitives for apps: drift detectors (``drift``), a drift monitor for a
scoring stage (``monitor``) and the model registry of a data folder (``registry``)."""
