# nurture: one image for every role (web, worker, beat, migrate); docker-compose.yml picks the command.
# Build: docker build -t nurture .      Runs as an unprivileged user; holds no secrets (they come from .env).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, so editing the code does not re-download them.
COPY pyproject.toml README.md ./
RUN python -m venv /opt/nurture \
 && mkdir nurture && touch nurture/__init__.py \
 && /opt/nurture/bin/pip install . \
 && /opt/nurture/bin/pip uninstall --yes nurture
COPY nurture ./nurture
RUN rm -rf build ./*.egg-info \
 && /opt/nurture/bin/pip install --no-deps . \
 && /opt/nurture/bin/python -c "import nurture.cli, nurture.web.app"

FROM python:3.11-slim
# Only the virtualenv (runtime dependencies and nurture itself) and the templates come across: no compiler,
# no pip cache, no tests.
ENV PATH=/opt/nurture/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NURTURE_ENV=production \
    NURTURE_VAR_DIR=/var/lib/nurture \
    NURTURE_TEMPLATES_DIR=/app/templates
RUN groupadd --system --gid 10001 nurture \
 && useradd --system --uid 10001 --gid nurture --home-dir /app --no-create-home --shell /usr/sbin/nologin nurture \
 && mkdir -p /app /var/lib/nurture/metrics \
 && chown -R nurture:nurture /var/lib/nurture
COPY --from=build /opt/nurture /opt/nurture
WORKDIR /app
COPY templates ./templates
COPY worker.py ./
USER nurture
EXPOSE 8000
# No HEALTHCHECK here: what "healthy" means differs per role, so docker-compose.yml sets one per service.
CMD ["nurture", "web", "--host", "0.0.0.0", "--port", "8000"]
