# syntax=docker/dockerfile:1
# Two images from one file:
#   web         the Django site (gunicorn, static files through WhiteNoise) and the CPU worker
#   gpu-worker  the same plus the `ml` extra (PyTorch; its Linux wheel on PyPI is the CUDA build)
FROM python:3.11-slim AS web
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data MODEL_STORE_DIR=/models STATIC_ROOT=/app/static
WORKDIR /app
RUN useradd --create-home --uid 1000 app && mkdir -p /data /models && chown app:app /data /models
COPY pyproject.toml README.md manage.py ./
COPY webapp webapp
COPY workers workers
COPY rlhf_core rlhf_core
RUN pip install .
# A throw-away key: collectstatic needs settings, and the real key only exists at run time.
RUN SECRET_KEY=collectstatic-only-this-is-not-a-secret DATA_DIR=/tmp/build \
    python manage.py collectstatic --noinput
USER app
EXPOSE 8000
CMD ["gunicorn", "webapp.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3"]

FROM web AS gpu-worker
USER root
RUN pip install ".[ml]"
USER app
CMD ["celery", "-A", "workers.app", "worker", "-Q", "gpu", "--concurrency", "1"]
