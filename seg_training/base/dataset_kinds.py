"""Names of the dataset kinds: what configs, dataset readers and provenance records call them."""

DATASETS = ('cityscapes', 'folder', 'bdd100k', 'mmseg', 'camvid', 'cvat')
# Frames without labels (a folder of images): distillation alone (seg_training.training.distill).
UNLABELLED_DATASETS = ('images',)
