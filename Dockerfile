# llmtap in a container: `docker build -t llmtap . && docker run -p 8787:8787 -v $PWD/data:/data llmtap`
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
ENV LLMTAP_DB=/data/llmtap.db \
    PYTHONUNBUFFERED=1
EXPOSE 8787
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8787/api/health', timeout=2)"
# inside a container loopback is unreachable from outside: listen on all interfaces here only
ENTRYPOINT ["llmtap"]
CMD ["serve", "--host", "0.0.0.0"]
