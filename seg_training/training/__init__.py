"""
Training: seg-train and what it is made of.

``loop`` (seg-train: the training run), ``config`` (TrainConfig: defaults, YAML, overrides),
``engine`` (epochs, steps, validation), ``losses``, ``transfer`` (starting from another model
file), ``distill`` (knowledge distillation) and ``lock`` (one run per output folder).
"""
