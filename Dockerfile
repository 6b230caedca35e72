# Liaowang image: replay, sensor, detection worker and console (the command picks the role)
FROM python:3.11-slim
WORKDIR /opt/liaowang
COPY pyproject.toml README.md ./
COPY sensors sensors
COPY detection detection
COPY ingest ingest
COPY console console
COPY rules rules
# editable: the bundled rules/ are found beside the code
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["liaowang"]
