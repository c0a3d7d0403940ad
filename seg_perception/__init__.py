"""Run-time side of seg_perception: the segmentation pipeline, node and commands."""
