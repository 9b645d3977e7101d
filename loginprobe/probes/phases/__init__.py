"""The timed phases a login runs over: dns, ping, tcp, tls."""
