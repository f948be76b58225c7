"""Event time: watermarks tracked where events come in (``watermarks``) and vectorized
tumbling, sliding and session windows (``windows``, with the session merging in
``sessions`` and what windows emit in ``firing``)."""
