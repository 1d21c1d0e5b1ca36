# One image for every agentwatch process (worker, sinks, exporter, CLI); docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY producers producers
COPY streams streams
COPY sinks sinks
COPY agentwatch agentwatch
RUN pip install '.[traces]' && useradd --system --uid 10001 agentwatch && mkdir -p /data && chown agentwatch /data
USER agentwatch
ENV AGENTWATCH_HOME=/data
ENTRYPOINT ["agentwatch"]
CMD ["--help"]
