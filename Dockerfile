# The service's one image: `serve` by default; `migrate`, `worker` and `relay` are other commands.
FROM python:3.11-slim

# Production unless told otherwise: it refuses to start without SECRET_KEY and SMTP_HOST
# rather than run with a throwaway key and reset links written to files.
ENV ENVIRONMENT=production \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Dependencies first, so a code change does not reinstall them.
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && pip install --require-hashes -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home app
WORKDIR /app
COPY alembic.ini ./
COPY alembic/ alembic/
COPY app/ app/
# DATA_DIR: mail written as files when SMTP_HOST is empty (development only).
RUN mkdir data && chown app:app data
USER app

EXPOSE 8000
# No curl in the slim image; PORT is honoured when it is set.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health/live\", timeout=4)"]
CMD ["python", "-m", "app", "serve", "--host", "0.0.0.0"]
