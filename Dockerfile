# cellsparse web app — mirrors `make run` (same Makefile, same pinned requirements.txt).
#
#   docker build -t cellsparse .
#   docker run --rm -p 7860:7860 cellsparse            # then open http://127.0.0.1:7860
#
# CPU by default: torch comes from PyTorch's CPU wheel index (small image, no CUDA libraries).
# GPU: build with the CUDA wheels and run with the GPU visible, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t cellsparse:gpu .
#   docker run --rm --gpus all -p 7860:7860 cellsparse:gpu
# (needs the NVIDIA Container Toolkit on the host; the app then shows "GPU" in the Train tab).
#
# SAM weights are not baked in: mount a cache to keep downloads between runs, or run offline with
# the built-in fallback:  -v cellsparse-cache:/cache  (CELLSPARSE_CACHE_DIR=/cache below).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    CELLSPARSE_CACHE_DIR=/cache \
    CELLSPARSE_SESSION_DIR=/tmp/cellsparse-sessions

RUN apt-get update \
    && apt-get install -y --no-install-recommends make libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /cache && chown app /cache

WORKDIR /app
# Dependencies first (cached layer), then the code; `make venv` is what `make run` starts with.
COPY --chown=app requirements.txt pyproject.toml Makefile README.md ./
RUN chown app /app
USER app
RUN python -m venv .venv && .venv/bin/pip install -r requirements.txt
COPY --chown=app . .
RUN make venv

EXPOSE 7860
CMD ["make", "run", "HOST=0.0.0.0", "PORT=7860"]
