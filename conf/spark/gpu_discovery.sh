#!/usr/bin/env bash
# Spark resource discovery for GPUs: prints {"name": "gpu", "addresses": ["0", "1", ...]} from nvidia-smi.
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/^ *//' -e 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
