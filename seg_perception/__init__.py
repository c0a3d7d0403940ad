"""Run-time side of seg_perception: the segmentation pipeline, node and commands."""

# seg_training's package sets OpenMP's wait policy (passive unless the environment says
# otherwise); it must run before any module here loads torch. Any of its modules runs it: this
# imports the lowest room, so that seg_perception depends on no room above it.
import seg_training.base  # noqa: F401
