"""Training side of seg_perception: ERFNet, class tables, model files, datasets and training."""
