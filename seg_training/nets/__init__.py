"""
The networks and their model file: what the node, seg-predict and every training tool run.

``model`` (ERFNet), ``espnetv2``, ``espnet`` and ``architectures`` (the registry of the three),
``checkpoint`` (the model file: write, read, the authors' published files), ``preprocess`` (the
network-input step), ``provenance_record`` and ``provenance`` (what a model was trained on),
``tta`` (test-time augmentation around a network), ``options`` (command-line option types that
know the networks) and ``convert`` (``python -m seg_training.nets.convert``).
"""
