"""Where the collector's results and counters go: Prometheus now; traces and logs later."""
