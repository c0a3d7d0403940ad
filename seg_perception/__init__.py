"""Run-time side of seg_perception: the segmentation pipeline, node and commands."""

# seg_training's package sets OpenMP's wait policy (passive unless the environment says
# otherwise); it must run before any module here loads torch.
import seg_training  # noqa: F401
