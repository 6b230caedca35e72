# Liaowang image: replay, sensor, detection worker and console (the command picks the role)
FROM python:3.11-slim
WORKDIR /opt/liaowang
# libpcap compiles live capture filters; tcpdump is the pcap capture engine; tshark dissects NGAP
RUN apt-get update && apt-get install -y --no-install-recommends libpcap0.8 tcpdump tshark \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY sensors sensors
COPY detection detection
COPY ingest ingest
COPY console console
COPY rules rules
# editable: the bundled rules/ are found beside the code
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["liaowang"]
