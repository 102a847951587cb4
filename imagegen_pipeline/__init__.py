"""imagegen-pipeline: folders of images in, a trained, evaluated, registered generator out."""

__version__ = "0.1.0"
