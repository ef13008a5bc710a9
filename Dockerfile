# agentgov runtime image: scorers (python -m consumers.scorer), writer (python -m consumers.writer) and the
# `agentgov` CLI (migrate, publish, trail, ...). Installs the project from pyproject.toml without the
# `embedded` extra: containers talk to a real Kafka and ClickHouse.
#
#   docker build -t agentgov:0.1.0 .
#
# Keep PYTHON_IMAGE's minor version inside pyproject's requires-python (tests/unit/test_compose_dockerfile.py).
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY consumers/ consumers/
RUN pip install .
# The code loads schemas/ and policies/ from beside the `pipeline` package (pipeline/schemas.py,
# pipeline/scoring/policy.py), so put them next to the installed package, then prove they load.
# `cd /` first: from /src, python would import the source tree instead of the installed package.
COPY schemas/ schemas/
COPY policies/ policies/
RUN site="$(cd / && python -c 'import pathlib, pipeline; print(pathlib.Path(pipeline.__file__).resolve().parent.parent)')" \
 && cp -r schemas policies "$site/" \
 && cd / \
 && python -c "from pipeline.schemas import SchemaSet; from pipeline.scoring.policy import load_policy; SchemaSet.load(); load_policy()"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 agentgov \
 && useradd --system --uid 10001 --gid agentgov --home-dir /var/lib/agentgov --create-home agentgov
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AGENTGOV_METRICS_ADDR=0.0.0.0 \
    AGENTGOV_LOG_FORMAT=json \
    AGENTGOV_STATE_DIR=/var/lib/agentgov
USER 10001:10001
WORKDIR /var/lib/agentgov
EXPOSE 9464
CMD ["agentgov", "--help"]
