# leakseg: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := .leakseg/demo

.PHONY: setup test test-fast demo bench schema clean

setup: $(VENV)/.installed

# One editable install with every extra: export, serve (TorchServe), test tools, video.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

# Unit tests only (no TorchServe), for a quick loop while editing.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not serve"

# Serve the bundled default model and segment a sample clip (see README.md).
demo: setup
	$(BIN)/leakseg export --checkpoint model_store/jvlgs-default --name jvlgs --output-dir model_store
	$(BIN)/leakseg synth $(DEMO)/clips --clips 1 --frames 8 --size 240 320 --seed 20261122
	$(BIN)/leakseg serve --model-store model_store --models jvlgs=jvlgs.mar
	$(BIN)/leakseg segment --url http://127.0.0.1:8080 --key-file .leakseg/serve/key_file.json --model jvlgs $(DEMO)/clips/*/images/*.png \
		--out $(DEMO)/result.json --overlay $(DEMO)/overlay.gif; \
		status=$$?; $(BIN)/leakseg serve --stop; exit $$status

bench: setup
	$(BIN)/python benchmarks/bench_model.py

schema: setup
	$(BIN)/leakseg schema -o docs/schema.json

clean:
	rm -rf .leakseg model_store/*.mar logs
