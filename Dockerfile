# llmtap in a container: `docker build -t llmtap . && docker run -p 8787:8787 -v llmtap-data:/data llmtap`
# (a named volume takes /data's owner from the image; a host folder must be writable by uid 10001)
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
ENV LLMTAP_DB=/data/llmtap.db \
    LLMTAP_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8787
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8787/api/health', timeout=2)"
ENTRYPOINT ["llmtap"]
CMD ["serve"]
