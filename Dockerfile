# One image for every shop process; docker-compose.yml picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the project itself (not an editable checkout), with exactly the versions of the lock file: the image keeps
# the installed package, not the sources.
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir -c requirements.lock . \
    && rm -rf /src

# Non-root. var/ is the relative default of SHOP_VAR_DIR; var/notifications is where compose mounts the named volume
# holding the notification log, created here so the volume starts out owned by this user. USER by uid (hadolint
# DL3066): a name may not resolve where the container runs (Kubernetes' runAsNonRoot needs a number).
RUN useradd --create-home --uid 10001 shop \
    && mkdir -p /app/var/notifications \
    && chown -R shop:shop /app
WORKDIR /app
USER 10001

# In a container the API must listen on every interface to be reachable through a published port.
ENV SHOP_ORDER_API_HOST=0.0.0.0
EXPOSE 5001

# Healthy while the order API that `shop up` serves is ready: its store and the broker answer (GET /health/ready).
# docker-compose.yml gives each of its containers a check of its own: an API its /health/ready, a worker `shop health`.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", \
         "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/health/ready' % os.getenv('SHOP_ORDER_API_PORT', '5001'), timeout=4)"]

# Everything in one container (an embedded Redis unless REDIS_URL is set): `docker run -p 5001:5001 shop`.
CMD ["shop", "up"]
