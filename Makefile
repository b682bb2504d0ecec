# leakseg: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := .leakseg/demo

.PHONY: setup test test-fast fuzz demo bench schema clean system-deps demo-monitor

setup: system-deps $(VENV)/.installed

# System packages for `leakseg monitor`'s tests and demo (Debian): the mosquitto MQTT broker and
# GStreamer's RTSP server (run by the system python3); nginx for deploy/proxy's test in front of
# TorchServe (the package's service is not needed: the test runs its own nginx). Installed only when
# missing; never fatal.
system-deps:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
		(apt-get install -y -qq nginx >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq nginx) || \
		echo "warning: could not install nginx (the reverse-proxy tests will be skipped)")
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
		(apt-get install -y -qq mosquitto >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq mosquitto) || \
		echo "warning: could not install mosquitto (MQTT tests will be skipped)")
	@/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" >/dev/null 2>&1 || \
		(apt-get install -y -qq python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good) || \
		echo "warning: could not install GStreamer's RTSP server (the RTSP test will be skipped)")

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

# The property-based fuzz tests only, with a much larger budget than `make test` gives them.
fuzz: setup
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q -m fuzz

# Serve the bundled default model and segment a sample clip (see README.md).
demo: setup
	$(BIN)/leakseg export --checkpoint model_store/jvlgs-default --name jvlgs --output-dir model_store
	$(BIN)/leakseg synth $(DEMO)/clips --clips 1 --frames 8 --size 240 320 --seed 20261122 --calm \
		--leak-free-fraction 0 --partial-fraction 0
	$(BIN)/leakseg serve --model-store model_store --models jvlgs=jvlgs.mar
	$(BIN)/leakseg segment --url http://127.0.0.1:8080 --key-file .leakseg/serve/key_file.json --model jvlgs $(DEMO)/clips/*/images/*.png \
		--normalization absolute --threshold 0.9 --out $(DEMO)/result.json --overlay $(DEMO)/overlay.gif; \
		status=$$?; $(BIN)/leakseg serve --stop; exit $$status

# `leakseg monitor` on a synthetic leak video: the alarm arriving over MQTT and OPC UA (docs/SCADA.md).
demo-monitor: setup
	$(BIN)/leakseg export --checkpoint model_store/jvlgs-default --name jvlgs --output-dir model_store
	$(BIN)/python examples/monitor_demo.py --archive model_store/jvlgs.mar

bench: setup
	$(BIN)/python benchmarks/bench_model.py

schema: setup
	$(BIN)/leakseg schema -o docs/schema.json

clean:
	rm -rf .leakseg model_store/*.mar logs
