# The two commands of the README: `make demo` and `make test`. Both install into .venv first
# (once: the stamp file is refreshed only when the requirements change) and never reach the
# network at run time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_HOME := $(CURDIR)/.prefect
export MVP_PROJECT_DIR := $(CURDIR)
export NLTK_DATA := $(CURDIR)/.nltk_data

.PHONY: install demo test test-fast lint test-portable bench serve deploy pipeline clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/install_nltk_data.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	bash scripts/install_nltk_data.sh $(NLTK_DATA)
	touch $(STAMP)

demo: install
	$(BIN)/mvp demo

test: install
	$(BIN)/python -m pytest

# The edit-test loop: everything not marked slow (no Prefect/MLflow servers, DDP or long runs).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

# The numeric tests under each thread count and kernel choice they must hold for (a fresh clone on
# another CPU differs in exactly these): one thread, two, PyTorch's portable kernels, AVX2 oneDNN.
NUMERIC_TESTS := $(addprefix tests/model/test_,losses.py masking.py model.py train.py variants.py \
                   overfit.py ddp.py retrieval.py feature_cache.py entailment.py refexp.py) \
                 tests/features/test_roi.py
test-portable: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(NUMERIC_TESTS)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q $(NUMERIC_TESTS)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q $(NUMERIC_TESTS)
	ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q $(NUMERIC_TESTS)

# Prefect server + worker and MLflow server on loopback (Ctrl-C stops them); then, in another
# terminal, `make deploy` and `make pipeline` run the pipeline through the worker.
serve: install
	$(BIN)/mvp serve

deploy: install
	$(BIN)/prefect --no-prompt deploy --all

pipeline: install
	$(BIN)/prefect deployment run 'mvp-pipeline/demo'

bench: install
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/features.py

clean:
	rm -rf runs .prefect
