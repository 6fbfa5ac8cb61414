"""The machine the code runs on: ``device`` (CPU/CUDA/MPS choice), ``threads`` (how many
threads a step may use) and ``compat`` (the one shim for dependencies that import torchvision).
"""
