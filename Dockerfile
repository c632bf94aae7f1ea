# signq worker image: one image for the ingest workers, the model worker, beat and flower.
#   docker compose build                      # TensorFlow CPU included (extra "cpu")
#   docker compose build --build-arg EXTRAS=  # a lighter image without TensorFlow (ingest only)
FROM python:3.11-slim

ARG EXTRAS=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Runtime libraries of the opencv-python-headless and TensorFlow wheels (no-ops where already present).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 zlib1g \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
RUN pip install ".${EXTRAS:+[$EXTRAS]}" flower

# Run unprivileged; /data is the shared storage volume (a new named volume inherits this ownership).
RUN useradd --create-home --uid 1000 signq \
 && mkdir -p /data \
 && chown signq:signq /data
USER signq
ENV SIGNQ_STORAGE=/data
VOLUME ["/data"]

CMD ["celery", "-A", "worker", "worker", "-Q", "ingest", "-c", "2", "--loglevel=INFO"]
