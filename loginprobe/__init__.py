"""loginprobe: timed, phase-by-phase login probes for instant-messaging services."""

__version__ = "0.1.0"
