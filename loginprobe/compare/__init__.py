"""`loginprobe compare`: login success and latency per check and group, and whether groups
differ: stats (the tests), promapi (the queries), report (the comparison), render (the
outputs), cli (the options)."""
