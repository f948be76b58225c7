"""The Ray boundary: spawning plain classes as actors and calling them (``handles``), typed
clients over them (``clients``), every actor's name (``names``), where each runs
(``placement``), what a running runtime reports (``status``), Arrow between actors (``wire``)
and a simulated edge-to-core cluster on one machine (``local``)."""
