# Liaowang sensor/replay image (the embedded pipeline; later issues add the console and workers)
FROM python:3.11-slim
WORKDIR /opt/liaowang
COPY pyproject.toml README.md ./
COPY sensors sensors
COPY detection detection
COPY ingest ingest
COPY console console
RUN pip install --no-cache-dir .
ENTRYPOINT ["liaowang"]
