# sparse_rt inference server: the Open Inference Protocol v2 (KServe v2 REST) on port 8080.
#
#   docker build -t sparse-rt:0.1.0 .
#   docker run -p 8080:8080 -v $PWD/models:/mnt/models sparse-rt:0.1.0 /mnt/models/mlp.onnx
#
# The entry point is `python -m sparse_rt serve`; the arguments are the model files (each
# served under its file stem) and any other serve option. KServe runs it as a custom
# predictor: deploy/kserve/inferenceservice.yaml.
FROM python:3.11-slim

# the CPU kernels are compiled on first use with the system C compiler
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sparse_rt
# the CPU build of torch first, so the range in pyproject.toml never pulls a CUDA build
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY sparse_rt ./sparse_rt
RUN pip install --no-cache-dir .

# compiled kernels and tuning caches; the image runs as an unprivileged user
ENV SPARSE_RT_CACHE_DIR=/var/cache/sparse_rt
RUN useradd --uid 1000 --create-home sparse \
    && mkdir -p /var/cache/sparse_rt \
    && chown sparse /var/cache/sparse_rt
USER 1000

EXPOSE 8080
ENTRYPOINT ["python", "-m", "sparse_rt", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD ["/mnt/models/model.onnx"]
