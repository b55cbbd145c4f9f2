# llmtap in a container:
#   docker build -t llmtap . && docker run -p 127.0.0.1:8787:8787 -v llmtap-data:/data llmtap
# (published on the host's loopback only: every recorded prompt is readable at the port; a named
# volume takes /data's owner from the image, a host folder must be writable by uid 10001; on a
# stop llmtap lets responses in flight finish for 10 s: `docker stop -t 15` gives it that time)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY recorder ./recorder
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 llmtap && mkdir /data && chown llmtap /data
USER llmtap
WORKDIR /data
# inside a container loopback is unreachable from outside: listen on all interfaces here only,
# in the environment, so that `docker run llmtap serve --upstream ...` keeps it
# the port too, so that the health check reads the one llmtap listens on: change it with
# `-e LLMTAP_PORT=9000` (a `serve --port` is not seen by the check)
ENV LLMTAP_DB=/data/llmtap.db \
    LLMTAP_HOST=0.0.0.0 \
    LLMTAP_PORT=8787 \
    PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8787
# healthy: it answers, on the port it was given, and its store is writing (`store.ok`: a full
# disk or a database locked by another process makes it unhealthy while forwarding goes on)
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import json, os, urllib.request as u; port = os.environ.get('LLMTAP_PORT', '8787'); health = json.load(u.urlopen('http://127.0.0.1:' + port + '/api/health', timeout=2)); raise SystemExit(0 if (health.get('store') or {}).get('ok', True) else 1)"
ENTRYPOINT ["llmtap"]
CMD ["serve"]
