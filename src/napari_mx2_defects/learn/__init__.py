"""Segmentation: models (segmentation-models-pytorch), datasets, training, inference, evaluation."""
