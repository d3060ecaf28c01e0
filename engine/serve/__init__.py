"""``kbridge serve``: the engine as an HTTP service. Requests become Rows that enter the same
stage graph as dataset rows (engine/executors/local.py in its long-lived mode), so the candidates of
several requests are rendered and scored together. JSON stays in ``app.py``; ``jobs.py`` works
on Rows; ``limits.py`` holds the ``[serve]`` settings; ``metrics.py`` the Prometheus series."""
