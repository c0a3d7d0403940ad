"""
What every room of seg_training shares, and seg_perception with it; it imports no other room.

``classes`` (class tables), ``files`` (atomic writes, disk-full errors), ``logtext`` (other
people's text made safe to log), ``yaml_reader`` (the bounded YAML reader and ConfigError),
``dataset_kinds`` (the names of the dataset kinds) and ``cli`` (what the command-line tools
share: help format, sizes, device, SIGTERM).
"""
