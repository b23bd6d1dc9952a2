# giftd: one image that runs `giftd serve`. It needs no other service: unless
# REDIS_URL / DATABASE_URL are set, giftd starts an embedded Valkey and Postgres
# (from their wheels) with their data in /data.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIFTD_VAR_DIR=/data

WORKDIR /app
COPY . .

# An editable install: server/app.py serves the pages from static/ next to the
# package sources, and static/ is not package data, so a plain `pip install .`
# would leave / and /static without files. Postgres refuses to run as root
# (as root, giftd would drop it to a system user), so the server runs as the
# unprivileged user `giftd`, which owns /data.
RUN pip install -e . \
 && useradd --system --create-home --home-dir /home/giftd --shell /usr/sbin/nologin giftd \
 && mkdir -p /data \
 && chown giftd:giftd /data

USER giftd
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# Settings.host defaults to 127.0.0.1; --host makes the port reachable from outside.
CMD ["giftd", "serve", "--host", "0.0.0.0"]
