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
# holding the notification log, created here so the volume starts out owned by this user.
RUN useradd --create-home --uid 10001 shop \
    && mkdir -p /app/var/notifications \
    && chown -R shop:shop /app
WORKDIR /app
USER shop

# In a container the API must listen on every interface to be reachable through a published port.
ENV SHOP_ORDER_API_HOST=0.0.0.0
EXPOSE 5001

# Everything in one container (an embedded Redis unless REDIS_URL is set): `docker run -p 5001:5001 shop`.
CMD ["shop", "up"]
