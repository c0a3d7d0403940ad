"""
The tables of docs/ that mirror code, generated from that code so that they cannot drift.

A region of a docs page between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` holds
the table NAME: ``node-parameters`` from :mod:`seg_perception.params` (the source of
``segmentation_node --help``), ``options COMMAND`` from the argparse parser of COMMAND (the source
of its ``--help``). ``make docs`` (``python docs/docs_tables.py``) rewrites the regions;
``--check`` rewrites nothing and exits 1 naming every page and region that differs from the code.
"""

import argparse
import importlib
import logging
from pathlib import Path
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from seg_perception import params

_logger = logging.getLogger(__name__)

# Every command with a parser: console scripts of setup.py by name, ``python -m`` tools by module.
# The module holds build_parser(). This script sits above both packages (it is no module of
# either), so it may import any of them.
COMMANDS = {
    'seg-predict': 'seg_perception.predict',
    'seg-bag': 'seg_perception.bag',
    'seg-replay': 'seg_perception.replay',
    'seg-synth': 'seg_training.synth.dataset',
    'seg-train': 'seg_training.training.loop',
    'seg-eval': 'seg_training.evaluation.seg_eval',
    'seg-export': 'seg_training.export',
    'seg_perception.demo': 'seg_perception.demo.cli',
    'seg_training.nets.provenance': 'seg_training.nets.provenance',
    'seg_training.nets.convert': 'seg_training.nets.convert',
}
ROOT = Path(__file__).resolve().parents[1]
REGION = re.compile(
    r'(<!-- generated: (?P<name>[^>]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)', re.S)


def build_parser(command: str) -> argparse.ArgumentParser:
    """Return the parser of ``command`` (a key of COMMANDS), as its ``--help`` is built."""
    return importlib.import_module(COMMANDS[command]).build_parser()


def _cell(text: Any) -> str:
    """Markdown table cell of plain text: one line; pipes, angle brackets and stars escaped."""
    text = ' '.join(str(text).split()).replace('|', '\\|').replace('*', '\\*')
    return text.replace('<', '&lt;').replace('>', '&gt;')


def _code(text: Any) -> str:
    """Markdown table cell of code: one line, pipes escaped."""
    return '`' + ' '.join(str(text).split()).replace('|', '\\|') + '`'


def _yaml_value(value: Any) -> str:
    """Write a default as a parameter file writes it."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value == '':
        return "''"
    if isinstance(value, list):
        return '[' + ', '.join(str(v) for v in value) + ']'
    return str(value)


def node_parameters() -> str:
    """Markdown table of the node's parameters: name, type, default, range or choices, meaning."""
    lines = ['| parameter | type | default | range / choices | meaning |',
             '| --- | --- | --- | --- | --- |']
    for name, kind, default, limits, description in params.describe():
        lines.append(f'| {_code(name)} | {kind} | {_code(_yaml_value(default))} | '
                     f'{_cell("; ".join(limits))} | {_cell(description)} |')
    return '\n'.join(lines)


def command_options(command: str) -> str:
    """Markdown table of a command's options, each with the text its ``--help`` shows."""
    parser = build_parser(command)
    formatter = parser._get_formatter()
    lines = [f'`{parser.prog}`: {_cell(parser.description or "")}', '',
             '| option | meaning |', '| --- | --- |']
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        invocation = formatter._format_action_invocation(action)
        lines.append(f'| {_code(invocation)} | {_cell(formatter._expand_help(action))} |')
    return '\n'.join(lines)


def table(name: str) -> str:
    """Return the generated text of region ``name``; ValueError for a name no table has."""
    if name == 'node-parameters':
        return node_parameters()
    command = name.removeprefix('options ')
    if name.startswith('options ') and command in COMMANDS:
        return command_options(command)
    raise ValueError(f'no generated table {name!r} (node-parameters or options COMMAND with '
                     f'COMMAND one of {", ".join(COMMANDS)})')


def regenerate(text: str, make: Callable[[str], str] = table) -> str:
    """Return ``text`` with every generated region's body made anew."""
    return REGION.sub(lambda m: f'{m.group(1)}\n{make(m.group("name"))}\n\n{m.group(4)}', text)


def regions(text: str) -> Dict[str, str]:
    """Map each generated region's name to its body."""
    return {m.group('name'): m.group('body') for m in REGION.finditer(text)}


def pages(root: Path = ROOT) -> List[Path]:
    """List the docs pages that may hold generated regions."""
    return sorted((root / 'docs').glob('*.md'))


def check(root: Path = ROOT) -> List[str]:
    """Return one line per region that differs from the code: page, region and what to run."""
    problems = []
    for page in pages(root):
        text = page.read_text(encoding='utf-8')
        try:
            fresh = regions(regenerate(text))
        except ValueError as e:
            problems.append(f'{page.relative_to(root)}: {e}')
            continue
        for name, body in regions(text).items():
            if fresh[name] != body:
                problems.append(f'{page.relative_to(root)}: generated region {name!r} differs '
                                'from the code; run `make docs`')
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Rewrite the generated regions of docs/*.md (``--check``: only report, exit 1 if stale)."""
    p = argparse.ArgumentParser(prog='python docs/docs_tables.py',
                                description=main.__doc__)
    p.add_argument('--check', action='store_true',
                   help='change nothing; exit 1 naming each page and region that is stale')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.check:
        problems = check()
        for line in problems:
            _logger.error('%s', line)
        return 1 if problems else 0
    for page in pages():
        text = page.read_text(encoding='utf-8')
        try:
            fresh = regenerate(text)
        except ValueError as e:
            _logger.error('%s: %s', page.relative_to(ROOT), e)
            return 1
        if fresh != text:
            page.write_text(fresh, encoding='utf-8')
            _logger.info('updated %s', page.relative_to(ROOT))
    return 0


if __name__ == '__main__':
    sys.exit(main())
