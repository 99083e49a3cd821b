"""The optional HTTP listener (``[http] listen``): one module per concern; routes register in
``server.Routes`` (``/metrics`` and ``/healthz`` today, the web console beside them later)."""
