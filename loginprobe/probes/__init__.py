"""Login probes: one module per protocol (xmpp, mqtt, http, handshake for tcp:// and tls://),
the phases they share (phases/), the Attempt they record into, and run.py, which owns the
deadline and turns whatever happened into exactly one Result."""
