"""COCO evaluation: running a model over a set, metrics, the reproduce table."""
