# modelyard on CPU: llama.cpp for GGUF models, the encoder engine for embeddings and rerank.
#   docker build -t modelyard .                       # add --build-arg EXTRAS=demo for the demo models
#   docker run -p 8000:8000 -v ./models:/models modelyard
# The install steps live in docker/install.sh, which the test suite runs too.

FROM python:3.11-slim-bookworm AS build
ARG EXTRAS=encoder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY docker/install.sh /src/docker/install.sh
RUN MODELYARD_EXTRAS="$EXTRAS" sh /src/docker/install.sh /opt/modelyard /src

FROM python:3.11-slim-bookworm
# llama.cpp's CPU build uses OpenMP.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 modelyard \
 && mkdir -p /models /data \
 && chown modelyard:modelyard /models /data
COPY --from=build /opt/modelyard /opt/modelyard
ENV PATH=/opt/modelyard/bin:$PATH \
    MODELYARD_HOME=/data \
    MODELYARD_MODELS_DIR=/models \
    MODELYARD_HOST=0.0.0.0 \
    MODELYARD_PORT=8000 \
    HF_HOME=/data/hf
USER modelyard
WORKDIR /data
VOLUME ["/models", "/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MODELYARD_PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["modelyard", "serve"]
