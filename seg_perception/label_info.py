"""
Class metadata as vision_msgs/LabelInfo, where vision_msgs is importable (ROS installs).

The node publishes it on ``segmentation/label_info`` (transient local) beside the JSON class
table. The pip install has no vision_msgs wheel: there :data:`LabelInfo` is None and the node
publishes the JSON table only.
"""

from typing import Any, List, Tuple

from seg_training.base.classes import ClassTable

try:
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # no ROS vision_msgs package here (no wheel on the package index)
    LabelInfo = VisionClass = None


def available() -> bool:
    """Tell whether vision_msgs/LabelInfo can be published."""
    return LabelInfo is not None


def class_map(classes: ClassTable) -> List[Tuple[int, str]]:
    """(class id as in segmentation/labels, class name) for every class of the table."""
    return list(enumerate(classes.names))


def label_info_msg(classes: ClassTable, header: Any) -> Any:
    """
    Build a LabelInfo with ``header``; threshold 0 (every pixel gets its most likely class).

    Raises RuntimeError when vision_msgs is not importable.
    """
    if LabelInfo is None:
        raise RuntimeError('vision_msgs is not installed: no LabelInfo message')
    return LabelInfo(header=header, threshold=0.0,
                     class_map=[VisionClass(class_id=i, class_name=name)
                                for i, name in class_map(classes)])
