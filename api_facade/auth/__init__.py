"""Who may call the facade: API tokens (``tokens``), their command line (``cli``), rate limits
(``ratelimit``) and the per-route dependency that applies them all (``access``)."""
