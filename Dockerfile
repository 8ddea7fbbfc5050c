# dlm-guard image: `dlm-guard serve` (webhook) and `dlm-guard reconcile` (reconciler).
#
#   make image            (tools/image/build.sh: podman or docker, base image, CA bundle)
#   docker build -t dlm-guard:dev .
#
# No `# syntax=` line: BuildKit's built-in frontend (Docker 23+) and buildah both know
# `RUN --mount`, and a syntax line would make docker pull a frontend image from a registry.
#
# Two stages: the builder turns the project and all its dependencies into wheels; the runtime
# installs only those wheels (no compiler, no pip, no source tree) and runs as a numeric non-root
# user, so Kubernetes can check runAsNonRoot without a passwd lookup.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, as their own layer: it is reused until pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt
# pip trusts the CA bundle passed as the build secret `ca-bundle` when there is one (behind a
# TLS-intercepting proxy, the host's); a secret never lands in a layer.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && pip wheel --wheel-dir /wheels -r /tmp/requirements.txt
# Then the project itself (.dockerignore keeps tests, charts, venvs and VCS data out).
COPY . .
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ARG GID=10001
LABEL org.opencontainers.image.title="dlm-guard" \
      org.opencontainers.image.description="Admission webhooks and a reconciler that make KubeVirt decentralized live migration safe" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Install from the builder's wheels without copying them into a layer, then remove the
# installers themselves (pip, setuptools, and the pip wheels ensurepip would reinstall from):
# nothing in the final image can build or fetch packages. Also removed: test modules shipped
# inside dependencies (kubernetes' *_test.py, aiohttp's test_utils), and the kubernetes
# client's asyncio copy (kubernetes/aio, about 68 MB with bytecode), which nothing in dlm-guard
# or the rest of the kubernetes package imports (the image smoke test runs serve and reconcile
# without it).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    PIP_NO_CACHE_DIR=1 pip install --no-index --find-links=/wheels /wheels/dlm_guard-*.whl \
 && pip uninstall --yes pip setuptools wheel \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && stdlib="$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \
 && rm -rf "$site/kubernetes/aio" "$site/tests" "$site"/*/tests \
      "$stdlib/ensurepip/_bundled" /usr/share/python-wheels \
 && find "$site" \( -name 'test_*.py' -o -name '*_test.py' -o -name 'conftest.py' \
      -o -name 'test_*.*.pyc' -o -name '*_test.*.pyc' -o -name 'conftest.*.pyc' \) -delete \
 && python -c 'import kubernetes, dlm_guard.cli, webhook.server, reconciler.service'
RUN groupadd --system --gid "${GID}" dlm-guard \
 && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin dlm-guard
USER ${UID}:${GID}
# Webhook HTTPS, reconciler metrics.
EXPOSE 8443 9090
ENTRYPOINT ["dlm-guard"]
CMD ["--help"]
