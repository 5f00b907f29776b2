"""rekd-ray: Relation Knowledge Distillation (ReKD) for small backbones, on Ray."""

__version__ = "0.1.0"
