# The upload-engine sandbox (both control planes + blob storage) as a container.
# Used by docker-compose.yml, which puts MinIO behind it as real S3 storage.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
# the s3 extra brings botocore, which --storage s3://... needs
RUN pip install --no-cache-dir ".[s3]" && useradd --create-home --uid 10001 sandbox
USER sandbox
WORKDIR /home/sandbox

EXPOSE 8700
ENTRYPOINT ["upload-engine"]
# Without --storage the blobs stay in the container's own store (a temporary directory).
CMD ["sandbox", "serve", "--host", "0.0.0.0", "--port", "8700"]
