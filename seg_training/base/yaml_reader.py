"""
The bounded YAML reader of every YAML file the project reads, and ConfigError.

Configs, ``classes.yaml``, class maps and dataset files are read with :func:`read_yaml_file`: at
most ``MAX_YAML_BYTES`` of UTF-8 text, parsed by the safe loader with alias bombs refused; every
error is a ConfigError that names the file.
"""

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import yaml

PathLike = Union[str, os.PathLike]
# Bounds of every YAML file the project reads (configs, classes.yaml): its size, and how many
# values its aliases may add to what is written (an alias bomb of a few hundred bytes expands
# to billions).
MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIAS_NODES = 10_000


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the source and the key."""


def _node_counts(root: yaml.Node, source: str) -> Tuple[int, int]:
    """
    Return (distinct nodes, nodes with every alias expanded) of a composed YAML document.

    Each distinct node is visited once (expanded sizes are remembered), so the walk is linear in
    the file however far its aliases expand. A recursive alias is a ConfigError.
    """
    sizes: Dict[int, int] = {}
    on_path = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise ConfigError(f'{source}: an alias refers to a node that contains it '
                                  '(recursive data is not accepted)')
            if id(child) not in sizes:
                stack.append((child, False))
    return len(sizes), sizes[id(root)]


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, source: str, max_alias_nodes: int = MAX_YAML_ALIAS_NODES) -> Any:
    """
    Parse YAML ``text`` with the safe loader, refusing alias bombs; ConfigError names ``source``.

    Aliases (``*name``) may add at most ``max_alias_nodes`` values to the document as written,
    so a few hundred bytes cannot expand into gigabytes in whoever walks the result; recursive
    aliases and nesting too deep for the parser are refused too. None for an empty document.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        written, expanded = _node_counts(node, source)
        if expanded - written > max_alias_nodes:
            raise ConfigError(f'{source}: aliases expand {written} YAML values to {expanded}; '
                              f'at most {max_alias_nodes} more than written are accepted')
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f'{source}: not valid YAML: {e}') from None
    except RecursionError:
        raise ConfigError(f'{source}: YAML nested too deeply') from None
    finally:
        loader.dispose()


def read_yaml_file(path: PathLike, what: str = 'YAML file',
                   max_bytes: int = MAX_YAML_BYTES) -> Any:
    """
    Read and parse a YAML file with :func:`load_yaml`; ConfigError names the file.

    The file must be UTF-8 text of at most ``max_bytes`` bytes (checked before it is read).
    """
    path = Path(path)
    try:
        with open(path, 'rb') as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f'{path}: {what} not found') from None
    except OSError as e:
        raise ConfigError(f'{path}: cannot read the {what}: {e.strerror}') from None
    if len(data) > max_bytes:
        raise ConfigError(f'{path}: {what} larger than {max_bytes} bytes; not read')
    return load_yaml(decode_utf8(data, path, what), str(path))


def decode_utf8(data: bytes, path: PathLike, what: str) -> str:
    """Decode ``data``, the contents of ``path``; ConfigError names the file and the byte."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise ConfigError(f'{path}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at '
                          f'offset {e.start})') from None
