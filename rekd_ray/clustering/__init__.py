"""Clustering: faiss spherical k-means of teacher features into prototypes."""

from rekd_ray.clustering.faiss_import import faiss_gpu_count, import_faiss
from rekd_ray.clustering.kmeans import (
    ClusteringInputError,
    KMeansResult,
    spherical_kmeans,
)

__all__ = [
    "ClusteringInputError",
    "KMeansResult",
    "faiss_gpu_count",
    "import_faiss",
    "spherical_kmeans",
]
