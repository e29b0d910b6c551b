"""The container images of the components: set here and nowhere else.

CPU stages run ``CPU_IMAGE``; GPU stages (train_encoder, later train_decoder) run ``GPU_IMAGE`` (CUDA
torch, DeepSpeed, faiss-gpu). Both hold the semcode package with the same version, so a component body
only imports ``semcode``. The images/ Dockerfiles build them.

``SEMCODE_IMAGE_REGISTRY`` (default ``ghcr.io/semcode``) and ``SEMCODE_IMAGE_TAG`` (default: the semcode
version) are read when the components are imported, i.e. when ``semcode compile`` writes the YAML: the
committed src/semcode/pipeline/train_pipeline.yaml uses the defaults, a private build compiles with its own.
"""

import os

from semcode import __version__

REGISTRY = os.environ.get("SEMCODE_IMAGE_REGISTRY", "ghcr.io/semcode").rstrip("/")
TAG = os.environ.get("SEMCODE_IMAGE_TAG", __version__)

CPU_IMAGE = f"{REGISTRY}/semcode-cpu:{TAG}"
GPU_IMAGE = f"{REGISTRY}/semcode-gpu:{TAG}"
