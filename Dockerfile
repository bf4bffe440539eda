# The neuralmark pipeline image: every step of every pipeline on the cluster runs in it, and so
# does the MLflow tracking server of k8s/ (the `remote` extra adds its PostgreSQL driver and the
# S3 clients of MLflow and of ZenML's S3 artifact store).
#   docker build -t REGISTRY/neuralmark:0.1.0 . && docker push REGISTRY/neuralmark:0.1.0
# The pins below must equal pyproject.toml's (tests/test_dockerfile.py fails otherwise).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG PYTHON_VERSION=3.11.14
ARG UV_VERSION=0.9.5
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV ZENML_ANALYTICS_OPT_IN=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git \
 && rm -rf /var/lib/apt/lists/* \
 && curl -LsSf "https://astral.sh/uv/${UV_VERSION}/install.sh" | env UV_INSTALL_DIR=/usr/local/bin sh \
 && uv python install "${PYTHON_VERSION}" \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv

# torch first (as the Makefile does): the CUDA build from PyPI
RUN uv pip install --no-cache "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY components ./components
COPY integrations ./integrations
COPY runtime ./runtime
COPY steps ./steps
COPY pipelines ./pipelines
COPY cli ./cli
COPY configs ./configs
# the pinned stack comes from pyproject.toml itself, so image and checkout cannot drift
RUN uv pip install --no-cache ".[remote]" \
 && python -c "import neuralmark.pipelines.training, zenml, mlflow, torch; print(torch.__version__)"

RUN groupadd --gid 1000 neuralmark \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/neuralmark neuralmark \
 && chown -R 1000:1000 /app
USER 1000:1000
ENV HOME=/home/neuralmark
