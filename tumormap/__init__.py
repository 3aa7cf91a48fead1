"""tumormap: tumor-ratio maps from H&E slides, learned from consecutive IHC slides.

Every workflow step is a plain function in this package; ``workflow_scripts/`` only
adapt Snakemake's inputs to them. Importing the package imports neither TensorFlow
nor PyTorch: StarDist and torch steps run in separate processes.
"""

__version__ = "0.1.0"
