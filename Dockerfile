# The image of every pod of the RayService in k8s/ (head and GPU workers: the head builds the application graph).
#   docker build -t <registry>/sam2-serve:0.1.0 .       # then set that name in k8s/overlays/*/kustomization.yaml
# The base image brings Ray (the version pyproject.toml pins), Python 3.11 and CUDA 12 user-space libraries.
FROM rayproject/ray:2.60.0-py311-gpu

# torch first, a CUDA build (pick the wheel index that matches your GPU nodes' driver); then sam2 without build
# isolation, so that its setup.py (which imports torch) uses this torch instead of fetching another one.
# SAM2_BUILD_CUDA=0 skips sam2's optional CUDA extension, which needs nvcc; without it sam2 skips filling small
# holes in video masks (with a warning), exactly as on the CPU machines the tests run on.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX_URL} torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}
RUN SAM2_BUILD_CUDA=0 pip install --no-cache-dir --no-build-isolation sam2==1.1.0

# The project: pyproject.toml (README.md is its readme), and the one package, sam2_serve (the browser page in
# sam2_serve/web is package data). The server extra brings Ray's Serve, FastAPI, PyAV, ...; torch, torchvision and
# sam2 are already satisfied by the lines above, so pip keeps them.
WORKDIR /home/ray/sam2-serve
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users sam2_serve ./sam2_serve
RUN pip install --no-cache-dir ".[server]"

# The checkpoint is baked in: pods start without a download and without a shared volume (see README, "Deploy on
# Kubernetes"). sam2_serve.models.loader looks in SAM2_SERVE_CHECKPOINT_DIR first; the build fetches the file from the
# Hugging Face Hub into it and checks that it holds that model's weights. Bake another size with
# --build-arg SAM2_MODEL=sam2.1-hiera-large (and name it in serve_config.yaml).
ENV SAM2_SERVE_CHECKPOINT_DIR=/home/ray/checkpoints
ARG SAM2_MODEL=sam2.1-hiera-base-plus
RUN python -c "from sam2_serve.models.loader import check_checkpoint, resolve_checkpoint; \
from sam2_serve.models.registry import get_spec; spec = get_spec('${SAM2_MODEL}'); path = resolve_checkpoint(spec); \
check_checkpoint(spec, path); print(path)"
