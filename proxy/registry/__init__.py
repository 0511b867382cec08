"""The registry domain: names, references, manifests, policy, errors (no HTTP here)."""
