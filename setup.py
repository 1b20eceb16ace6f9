"""Packaging for MaskFace. Versions that matter are pinned (see docs/ARCHITECTURE.md §6)."""
from setuptools import find_packages, setup

# torch/torchvision are pinned to the releases that ship as local files on our machines; a
# looser range pulls a multi-GB CUDA build from the registry.
CORE = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "numpy>=1.24,<2",  # nvidia-pytriton (serving) needs numpy<2; keep one numpy everywhere
    "opencv-python-headless>=4.8,<5",
    "scipy>=1.10",  # reads the WIDER FACE .mat ground truth
    "matplotlib>=3.7",
    "tqdm>=4.60",
]
# openvino: the CPU BF16 and INT8 paths (maskface.runtimes.openvino_runtime); ~180 MB, chosen by
# measurement on an AMX CPU: demo detector BF16 at 0.28x ONNX Runtime FP32's time, where PyTorch BF16
# eager took 1.8x and ONNX Runtime has no BF16 convolutions (docs/DEPLOYMENT.md 5.5).
# onnx / onnxruntime: the INT8 graphs (ONNX Runtime's quantiser) and their measured drift depend on the
# release; 1.32.0 is the one benchmarks/results record, onnx 1.23.2 the one installed with it and tested.
EXPORT = ["onnx==1.23.2", "onnxruntime==1.32.0", "openvino==2026.4.1"]
SERVING = ["nvidia-pytriton==0.7.0", "tritonclient[http,grpc]>=2.40"]
# scikit-image ships real test photos. tensorrt-lean (TensorRT 11 runtime without builder, ~105 MB, installs
# on Python 3.11 here) loads the plugin library in the plugin tests; scripts/bootstrap.sh adds 10.16.1.11
# in its own folder for the plugin built against the 10.16 headers.
TEST = ["pytest>=8", "scikit-image>=0.22", "tensorrt-lean==11.4.0.106"]
# GPU-only extras: never imported on the CPU path (imports are lazy).
GPU = ["tensorrt-lean==11.4.0.106", "onnxruntime-gpu>=1.18"]

setup(
    name="maskface",
    version="0.1.0",
    description="MaskFace: multi-task face and landmark detector, with ONNX/TensorRT/Triton deployment",
    python_requires=">=3.10",
    # export/, plugins/ and benchmarks/ are packages too, so that an installed maskface builds engines
    # and runs the benchmarks without sys.path edits. The Triton model templates (triton_models/) ship
    # as the package data of maskface.serving.triton_models; the plugin's C++/CUDA sources as plugins'.
    packages=find_packages(include=["maskface", "maskface.*", "export", "plugins", "benchmarks"])
    + ["maskface.serving.triton_models"],
    package_dir={"maskface.serving.triton_models": "triton_models"},
    package_data={
        "maskface.serving.triton_models": ["README.md", "*/config.pbtxt.in", "*/1/model.py"],
        "plugins": ["CMakeLists.txt", "README.md", "include/*/*.h", "src/*", "tools/*"],
        "benchmarks": ["README.md", "gpu_check.sh"],
        # the shipped demo model (maskface.load() and detect default to it) and its card
        "maskface.demo": ["maskface_demo.pth", "MODEL_CARD.md"],
    },
    install_requires=CORE,
    extras_require={
        "export": EXPORT,
        "serving": EXPORT + SERVING,
        "test": TEST,
        "dev": EXPORT + SERVING + TEST,
        "gpu": GPU,
    },
    entry_points={"console_scripts": ["maskface=maskface.cli:main"]},
)
