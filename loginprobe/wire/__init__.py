"""Generated from proto/loginprobe/v1 by scripts/gen-proto; do not edit."""
