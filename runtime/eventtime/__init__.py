"""Event time: watermarks tracked where events come in (``watermarks``) and vectorized
tumbling, sliding and session windows (``windows``)."""
