"""fasterrcnn: Faster R-CNN (Ren, He, Girshick, Sun) in PyTorch."""

__version__ = "0.1.0"
