"""Evaluation of frozen representations: features, kNN, linear probe, clusters."""

from rekd_ray.evaluation.cluster_quality import cluster_quality
from rekd_ray.evaluation.features import extract_features
from rekd_ray.evaluation.knn import weighted_knn_accuracy
from rekd_ray.evaluation.linear import linear_probe_accuracy

__all__ = [
    "cluster_quality",
    "extract_features",
    "linear_probe_accuracy",
    "weighted_knn_accuracy",
]
