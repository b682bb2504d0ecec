# leakseg GPU serving image: TorchServe + the leakseg handler + the default archive.
#
#   docker build -t leakseg .
#   docker run --gpus all -p 8080:8080 leakseg
#   docker exec <container> leakseg serve --print-token        # the inference key
#
# Inside the container the inference API listens on 0.0.0.0:8080 (a container's loopback is
# not reachable through a published port); management (8081) and metrics (8082) stay on the
# container's loopback. Token authorization is on (config.properties). Logs: /opt/leakseg/logs.
# Kept in step with `leakseg serve` by tests/test_dockerfile.py (hadolint + the CMD's arguments).

# CUDA 12 + cuDNN 9: what onnxruntime-gpu >= 1.19 is built against.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Java 17 for TorchServe's frontend; tini as PID 1 reaps TorchServe's orphans and forwards
# SIGTERM to `leakseg serve`, which stops TorchServe cleanly.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && pip install "pip==24.2" "setuptools==75.1.0" "wheel==0.44.0"

WORKDIR /opt/leakseg

# The package first (the layer with the dependencies changes only with them).
COPY pyproject.toml README.md ./
COPY leakseg ./leakseg
# The serve extra brings the CPU onnxruntime; both wheels install the same `onnxruntime` module,
# so the GPU one is reinstalled last or the CUDA provider is missing. (DL3013: the versions are
# pyproject.toml's ranges; the reinstall pins the onnxruntime-gpu just resolved.)
# hadolint ignore=DL3013
RUN pip install ".[serve,gpu]" \
    && pip uninstall -y onnxruntime \
    && pip install --force-reinstall --no-deps "$(pip freeze | grep -i '^onnxruntime-gpu==')"

COPY config.properties ./

# The default archive, built once here: model_store/jvlgs.mar, served as /predictions/jvlgs.
COPY model_store/jvlgs-default ./model_store/jvlgs-default
RUN leakseg export --checkpoint model_store/jvlgs-default --name jvlgs --output-dir model_store

# Non-root; TorchServe writes only its logs and its run folder (.leakseg/serve: keys, sockets).
RUN groupadd --system --gid 10001 leakseg \
    && useradd --system --uid 10001 --gid 10001 --home-dir /opt/leakseg --shell /usr/sbin/nologin leakseg \
    && mkdir -p logs .leakseg \
    && chown leakseg:leakseg logs .leakseg
USER 10001:10001

EXPOSE 8080

# Healthy = every model answers a describe request (TorchServe's /ping is Healthy too early).
HEALTHCHECK --interval=30s --timeout=15s --start-period=300s --retries=3 \
    CMD ["leakseg", "serve", "--check"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["leakseg", "serve", "--foreground", "--model-store", "model_store", "--models", "jvlgs=jvlgs.mar", \
     "--set", "inference_address=http://0.0.0.0:8080"]
