# skr: SEV-SNP attestation + Azure secure key release sidecar / init container.
#
# Two stages on debian:bookworm-slim (Debian's Python 3.11; a python:*-slim base cannot be rebuilt
# from Debian packages, and one distribution for build and run keeps the venv's interpreter path
# valid). The build stage compiles the cffi /dev/sev-guest binding; the runtime stage gets the venv
# and nothing else: no compiler, no headers, no pip.
#
# Build (the CA secret is only needed behind a TLS-intercepting proxy; it is never stored in a layer):
#   podman build --format docker --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t skr:0.1.0 .
# Run: skr serve (default), skr release ... (init container), skr doctor. The stand-ins (`skr dev`) are
# only in the `dev` target: podman build --target dev -t skr-dev:0.1.0 .
#
# apt pins: packages that never change within bookworm are pinned exactly; packages that follow
# bookworm's stable/security updates (the interpreter, glibc headers, kernel headers, CA store) are
# pinned to their upstream version with a trailing wildcard for the Debian revision, because an
# exact revision vanishes from the mirror at the next security update and would break the build.

FROM debian:bookworm-slim AS build

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3=3.11.2-1+b1 \
      'python3.11=3.11.2-6+deb12u*' \
      python3-venv=3.11.2-1+b1 \
      python3-dev=3.11.2-1+b1 \
      gcc=4:12.2.0-3 \
      'libc6-dev=2.36-9+deb12u*' \
      'linux-libc-dev=6.1.*' \
 && rm -rf /var/lib/apt/lists/*

# Build tools, pinned here because they never reach the runtime image.
ARG SETUPTOOLS_VERSION=80.9.0
ARG WHEEL_VERSION=0.45.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY requirements.lock ./

# Dependencies first (their layer survives source edits). /opt/skr is the runtime venv; /opt/build
# only builds the wheel. PIP_CERT points at the host CA bundle when the build is given one.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/skr \
 && /opt/skr/bin/pip install --no-deps --require-virtualenv -r requirements.lock \
 && python3 -m venv /opt/build \
 && grep -E '^(cffi|pycparser)==' requirements.lock > /tmp/build-requirements.txt \
 && /opt/build/bin/pip install --require-virtualenv \
      "setuptools==${SETUPTOOLS_VERSION}" "wheel==${WHEEL_VERSION}" -r /tmp/build-requirements.txt

COPY pyproject.toml setup.py README.md ./
COPY native ./native
COPY skr ./skr
COPY devstack ./devstack

# Build the wheel (compiling the binding), install it without touching the index, prove the binding
# imports. /opt/skr-dev is the same venv plus the development stand-ins (skr-dev: SIMULATED platform,
# Azure emulators), used only by the `dev` target; the production venv never contains them. Then drop
# pip and setuptools from both.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . ./devstack \
 && /opt/skr/bin/pip install --no-deps --no-index --require-virtualenv /tmp/wheels/skr-0*.whl \
 && /opt/skr/bin/python -I -c "import skr.snp._snp_native" \
 && python3 -m venv /opt/skr-dev \
 && /opt/skr-dev/bin/pip install --no-deps --require-virtualenv -r requirements.lock -r devstack/requirements.lock \
 && /opt/skr-dev/bin/pip install --no-deps --no-index --require-virtualenv /tmp/wheels/skr-0*.whl /tmp/wheels/skr_dev-*.whl \
 && /opt/skr/bin/python -m pip uninstall -y -q pip setuptools \
 && /opt/skr-dev/bin/python -m pip uninstall -y -q pip setuptools \
 && /opt/skr/bin/skr --help > /dev/null \
 && if /opt/skr/bin/python -I -c "import skr_dev" 2> /dev/null; then exit 1; fi


# --- production runtime (the default target, re-selected by the last stage) ---
FROM debian:bookworm-slim AS runtime

ARG DEBIAN_FRONTEND=noninteractive
# ca-certificates: the system roots skr trusts for TLS and for the Key Vault release JWS chain.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3=3.11.2-1+b1 \
      'python3.11=3.11.2-6+deb12u*' \
      'ca-certificates=20250419~deb12u*' \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log

COPY --from=build /opt/skr /opt/skr

LABEL org.opencontainers.image.title="skr" \
      org.opencontainers.image.description="SEV-SNP attestation and Azure secure key release sidecar" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"

# Read-only root filesystem: nothing is written outside /tmp (mount a tmpfs there), no bytecode.
ENV PATH=/opt/skr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

USER 65532:65532
WORKDIR /tmp
EXPOSE 8080

# Liveness of the local API (no curl in the image). Follows SKR_PORT and the Go sidecar's Port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as u; p = os.environ.get('SKR_PORT') or os.environ.get('Port') or '8080'; u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4).close()"]

ENTRYPOINT ["skr"]
CMD ["serve"]


# --- `podman build --target dev`: the runtime plus the SIMULATED stand-ins, for `skr dev` only ---
FROM runtime AS dev
COPY --from=build /opt/skr-dev /opt/skr-dev
ENV PATH=/opt/skr-dev/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title="skr-dev" \
      org.opencontainers.image.description="SIMULATED SEV-SNP platform and Azure emulators for skr - NOT A TEE"
CMD ["dev"]


# --- the default build: production, without the stand-ins ---
FROM runtime
