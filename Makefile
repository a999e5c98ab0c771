# batchscore: `make demo` sets everything up and runs the nightly job; `make test` runs the whole suite.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export BATCHSCORE_HOME ?= $(CURDIR)/.batchscore

.PHONY: setup demo test lint typecheck pytest bench bench-quick bench-memory bench-cold bench-sharing lock clean airflow-nightly docs

# Virtualenv with the exact versions of constraints.txt (pip's cache is reused between machines' runs).
$(VENV)/.installed: setup.cfg constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24"
	$(PY) -m pip install -c constraints.txt -e '.[spark,dev,airflow]'
	touch $@

# Delta Lake's JVM jars, resolved once from Maven Central into $(BATCHSCORE_HOME)/jars.
$(BATCHSCORE_HOME)/jars/MANIFEST: $(VENV)/.installed
	$(BIN)/batchscore setup

setup: $(VENV)/.installed $(BATCHSCORE_HOME)/jars/MANIFEST

demo: setup
	$(BIN)/batchscore demo

# The nightly DAG once, for real, on the demo data (after `make demo`): `make airflow-nightly DS=2026-11-29`.
DS ?= 2026-11-29
AIRFLOW_ENV = AIRFLOW_HOME=$(CURDIR)/.batchscore/airflow AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/airflow_dags BATCHSCORE_HOME=$(CURDIR)/.batchscore \
	AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[2]"}' PATH=$(CURDIR)/$(BIN):$$PATH
airflow-nightly: setup
	$(AIRFLOW_ENV) $(BIN)/airflow db migrate
	$(AIRFLOW_ENV) $(BIN)/airflow dags test batchscore_nightly_scoring $(DS)

# The Pythons of python_requires (setup.cfg): ruff lints for the oldest (pyproject.toml), and checks the
# syntax for each; mypy checks the standard library's API of each.
PYTHONS := 3.10 3.11 3.12 3.13
LINTED := jobs udfs tests bench airflow_dags notebooks
lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	for v in $(subst .,,$(PYTHONS)); do $(BIN)/ruff check -q --target-version py$$v --select E9,F $(LINTED) || exit 1; done

typecheck: setup
	for v in $(PYTHONS); do echo "mypy --python-version $$v"; $(BIN)/mypy --python-version $$v || exit 1; done

pytest: setup
	$(BIN)/pytest

test: lint typecheck pytest

# Benchmarks (not part of the test suite): our path vs mlflow spark_udf, predict_batch_udf, raw torch, JVM scan.
bench: setup
	$(PY) bench/bench.py

bench-quick: setup
	$(PY) bench/bench.py --quick

# Each Python worker of the job with defaults against serverless' 1 GB UDF limit (kernel-enforced where
# this machine lets us make memory cgroups).
bench-memory: setup
	$(PY) bench/worker_memory.py

# The cold nightly job: a new process per run, ours against a cold spark_udf job and our warm job.
bench-cold: setup
	$(PY) bench/cold_job.py

# model.sharing: worker against executor on CPU, and the model server's transport.
bench-sharing: setup
	$(PY) bench/model_sharing.py --model encoder
	$(PY) bench/model_transport.py

# docs/configuration.md from the config models (a test checks it is current).
docs: $(VENV)/.installed
	$(PY) -m batchscore.jobs.config_docs > docs/configuration.md

lock: $(VENV)/.installed
	{ echo '# Exact versions seen to install together (python 3.11, linux x86_64). Regenerate with `make lock`.'; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^batchscore'; } > constraints.txt

clean:
	rm -rf $(VENV) .batchscore .pytest_cache .mypy_cache .ruff_cache
