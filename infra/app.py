#!/usr/bin/env python3
"""CDK entry point: ``cdk synth`` and ``cdk deploy`` run this (see cdk.json and README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry_proxy_infra.application import main

if __name__ == "__main__":
    sys.exit(main())
