"""Applications: what an app is (``app``), screening batches for it (``screen``), the
pipeline builder (``builder``), the one driver loop that feeds, checkpoints and restarts
(``driver``), and finding apps by name (``apps``)."""
