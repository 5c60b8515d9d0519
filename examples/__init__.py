"""Example backends for the gateway demo (see scripts/demo)."""
