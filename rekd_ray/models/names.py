"""Names of the supported backbones, importable without torch."""

BACKBONE_NAMES: tuple[str, ...] = (
    "alexnet",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "resnet18",
    "resnet50",
)
