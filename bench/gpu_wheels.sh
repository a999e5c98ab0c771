#!/usr/bin/env bash
# The wheels bench/gpu_sharing.py needs on the device machine beyond its image (Python 3.12 with torch,
# numpy, pyarrow, psutil, protobuf, requests, pyyaml, click, cloudpickle): mlflow-skinny, to load the
# model the way a worker does, and what it imports. Into .whl/ (git-ignored), for the device's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl \
    mlflow-skinny==3.17.2 cachetools==7.3.3 databricks-sdk==0.162.0 google-auth==2.63.0 \
    pyasn1-modules==0.4.2 pyasn1==0.6.5 fastapi==0.136.3 starlette==1.10.0 gitpython==3.2.1 gitdb==4.0.12 \
    smmap==5.0.3 importlib-metadata==8.7.1 opentelemetry-api==1.45.2 opentelemetry-proto==1.45.2 \
    opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 pydantic==2.14.4 \
    pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 python-dotenv==1.2.4 \
    sqlparse==0.6.1 uvicorn==0.54.0
du -sh .whl
