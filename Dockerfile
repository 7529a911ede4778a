# ipsecd: one image for the controller (ipsecd-controller, ipsecctl), the node agent
# (ipsecd) and the Helm chart's bundled etcd (charts/ipsecd).
#
#   docker build -t REGISTRY/ipsecd:0.1.0 .
#
# Debian 12 slim with Debian's Python 3.11; the Python dependencies at the versions of
# constraints.txt (the ones the test suite ran with).  Not built in this project's CI:
# the development machines reach no image registry (docs/operations.md "Kubernetes").

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY ipsecd ./ipsecd
COPY agent ./agent
COPY controller ./controller
RUN python3 -m venv /opt/ipsecd \
 && /opt/ipsecd/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/ipsecd/bin/pip install --no-cache-dir -c constraints.txt . \
 && /opt/ipsecd/bin/python -m compileall -q /opt/ipsecd/lib

FROM debian:bookworm-slim
# python3: the interpreter the venv was made with.  iproute2: `ip xfrm` for an
# operator's look at the node's kernel state (kubectl exec).  etcd-server: Debian's
# etcd 3.4, the bundled etcd of the chart (the version the tests run against); its
# service is never started here.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 iproute2 etcd-server ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ipsecd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin ipsecd
COPY --from=build /opt/ipsecd /opt/ipsecd
ENV PATH=/opt/ipsecd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The controller and etcd run as this user; the agent's pod runs as root with only
# NET_ADMIN and NET_BIND_SERVICE (charts/ipsecd/README.md "Security").
USER 10001:10001
CMD ["ipsecd-controller", "--help"]
