"""The ingress's work, one module per operation, reached by both the HTTP routes and the Python handle API.

``embeddings``: the shared cache, one encode per image, recent references, re-encode once when a replica is lost.
``predict``: prompted masks and ``embed``. ``segment``: automatic masks. ``video``: ``generate`` and sessions.
Services hold deployment handles and validate requests; the model work happens in the other deployments.
"""
