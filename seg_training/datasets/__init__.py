"""
Datasets: reading images and masks, the dataset layouts, augmentation, class maps, the check.

``image_header`` (an image's size from its header), ``segmentation`` (image and mask readers,
the dataset base class, ``classes.yaml``), ``formats`` (BDD100K, mmsegmentation, CamVid and CVAT
layouts), ``build`` (Cityscapes and folder layouts, ``build_dataset``, loader workers, the
dataset check), ``transforms`` (training augmentation and validation transform) and
``class_map`` (mapping one class table onto another).
"""
