"""``eximauthd serve``: the Unix socket, the HTTP API, the decisions they share, metrics and
logs."""
