"""The README and docs/ agree with the code: generated tables, links, commands and quick start."""

from dataclasses import fields
import importlib
import json
from pathlib import Path
import re
import shlex

import cv2
import pytest

from file_module import load_file
from seg_perception import params

ROOT = Path(__file__).resolve().parents[2]
docs_tables = load_file(ROOT / 'docs' / 'docs_tables.py')
README = ROOT / 'README.md'
PAGES = [README] + sorted((ROOT / 'docs').glob('*.md'))
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.S | re.M)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """Text without fenced code blocks and inline code (links there are no links)."""
    return re.sub(r'`[^`\n]*`', '', FENCE.sub('', text))


def anchors(page: Path) -> set:
    """Return the anchors GitHub gives a page's headings (lower case, no punctuation)."""
    seen, found = {}, set()
    for line in FENCE.sub('', page.read_text(encoding='utf-8')).splitlines():
        m = re.match(r'#{1,6} +(.*)', line)
        if not m:
            continue
        slug = re.sub(r'[^\w\- ]', '', m.group(1).strip().lower()).replace(' ', '-')
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f'{slug}-{n}')
    return found


def shell_lines(page: Path):
    """Yield the logical lines of a page's shell blocks: continuations joined, comments cut."""
    for lang, body in FENCE.findall(page.read_text(encoding='utf-8')):
        if lang not in ('bash', 'sh'):
            continue
        for line in body.replace('\\\n', ' ').splitlines():
            line = re.sub(r'(^|\s)#.*$', '', line).strip()
            for part in re.split(r'&&|;|\s&(?:\s|$)', line):
                if part.strip():
                    yield part.strip()


def command_of(tokens):
    """Return (command, the tokens after it) for a line running a known command, else None."""
    modules = {module: name for name, module in docs_tables.COMMANDS.items()}
    modules.update({name: name for name in docs_tables.COMMANDS if '.' in name})
    modules['seg_training.synth'] = 'seg-synth'
    for i, token in enumerate(tokens):
        if token == 'segmentation_node' or token in docs_tables.COMMANDS:
            return token, tokens[i + 1:]
        if token == '-m' and i + 1 < len(tokens) and tokens[i + 1] in modules:
            return modules[tokens[i + 1]], tokens[i + 2:]
    return None


def test_generated_tables_match_the_code():
    problems = docs_tables.check()
    assert not problems, '\n'.join(problems)


def test_a_changed_default_is_named_by_page_and_region(monkeypatch):
    alpha = next(f for f in fields(params.NodeParams) if f.name == 'overlay_alpha')
    monkeypatch.setattr(alpha, 'default', 0.7)
    original = docs_tables.build_parser

    def changed(command):
        parser = original(command)
        if command == 'seg-eval':
            parser.set_defaults(batch_size=16)
        return parser

    monkeypatch.setattr(docs_tables, 'build_parser', changed)
    problems = docs_tables.check()
    assert len(problems) == 2, problems
    assert problems[0].startswith('docs/evaluation_export.md: ')
    assert "'options seg-eval'" in problems[0]
    assert problems[1].startswith('docs/node.md: ') and "'node-parameters'" in problems[1]
    assert all('make docs' in p for p in problems)


def test_regenerating_rewrites_only_the_regions():
    text = ('before\n<!-- generated: options seg-export -->\nSTALE TABLE\n<!-- end generated -->\n'
            'after\n')
    fresh = docs_tables.regenerate(text)
    assert fresh.startswith('before\n<!-- generated: options seg-export -->\n\n`seg-export`: ')
    assert '| `--model MODEL` |' in fresh and 'STALE TABLE' not in fresh
    assert fresh.endswith('\n\n<!-- end generated -->\nafter\n')
    assert docs_tables.regenerate(fresh) == fresh
    with pytest.raises(ValueError, match="no generated table 'options seg-nothing'"):
        docs_tables.regenerate('<!-- generated: options seg-nothing -->\n<!-- end generated -->')


def test_every_console_script_has_its_table():
    scripts = re.findall(r"'([\w-]+) = ([\w.]+):main'", (ROOT / 'setup.py').read_text())
    assert len(scripts) >= 8
    found = {}
    for page in PAGES[1:]:
        for name in docs_tables.regions(page.read_text(encoding='utf-8')):
            found[name] = rel(page)
    assert 'node-parameters' in found
    for name, _ in scripts:
        if name != 'segmentation_node':
            assert f'options {name}' in found, f'no generated option table of {name} in docs/'
    for name in docs_tables.COMMANDS:
        assert f'options {name}' in found, f'no generated option table of {name} in docs/'


@pytest.mark.parametrize('page', PAGES + [ROOT / 'models' / 'README.md'], ids=rel)
def test_relative_links_resolve(page):
    for target in LINK.findall(prose(page.read_text(encoding='utf-8'))):
        if re.match(r'[a-z]+:', target):
            continue
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f'{rel(page)}: link {target} leads to no file'
        if anchor and dest.suffix == '.md':
            assert anchor in anchors(dest), f'{rel(page)}: link {target}: no such heading'


@pytest.mark.parametrize('page', PAGES + [ROOT / 'models' / 'README.md'], ids=rel)
def test_test_files_named_in_the_docs_exist(page):
    named = re.findall(r'\btest/[\w/]*test_[\w*]+\.py', page.read_text(encoding='utf-8'))
    missing = [n for n in named if not list(ROOT.glob(n))]
    assert not missing, f'{rel(page)} names test files that are not there: {missing}'


def test_readme_is_a_front_door():
    text = README.read_text(encoding='utf-8')
    assert len(text.splitlines()) <= 260
    assert text.split('\n```bash\n')[1].startswith('make demo') and '\nmake test' in text[:400]
    linked = {(README.parent / t.partition('#')[0]).resolve() for t in LINK.findall(prose(text))}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f'README does not link {rel(page)}'
        head = '\n'.join(page.read_text(encoding='utf-8').splitlines()[:6])
        assert '](../README.md)' in head, f'{rel(page)}: no link back to the README at the top'


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_commands_in_the_docs_exist_with_their_options(page):
    names = {f.name for f in fields(params.NodeParams)} | {'use_sim_time'}
    ran = 0
    for line in shell_lines(page):
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        first = next((tok for tok in tokens if '=' not in tok), '')
        assert not re.match(r'seg[-_]', first) or first in docs_tables.COMMANDS \
            or first == 'segmentation_node', f'{rel(page)}: `{line}`: no command {first}'
        found = command_of(tokens)
        if found is None:
            continue
        command, args = found
        ran += 1
        if command == 'segmentation_node':
            for flag, value in zip(args, args[1:] + ['']):
                if flag == '-p':
                    assert value.split(':=')[0] in names, f'{rel(page)}: {line}: no parameter'
            continue
        options = docs_tables.build_parser(command)._option_string_actions
        for token in args:
            option = token.strip('[]').split('=')[0]
            if option.startswith('--') and len(option) > 2:
                assert option in options, f'{rel(page)}: `{line}`: {command} has no {option}'
    if page == README:
        assert ran >= 8  # the quick start's commands were all seen


def run(command: str, argv: list) -> int:
    """Run a command's main() (found where docs_tables finds its parser) in this process."""
    return importlib.import_module(docs_tables.COMMANDS[command]).main(argv)


def readme_command(name: str) -> list:
    """Return the arguments of the README's one line that runs ``name``."""
    lines = [shlex.split(line) for line in shell_lines(README) if line.startswith(name + ' ')]
    assert len(lines) == 1, f'README: expected one {name} line, found {len(lines)}'
    return lines[0][1:]


@pytest.fixture
def checkout_copy(tmp_path, monkeypatch):
    """Make a folder like the checkout (models, samples, config linked) the working dir."""
    for name in ('models', 'samples', 'config'):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_seg_predict_runs_as_written(checkout_copy):
    argv = readme_command('seg-predict')
    assert run('seg-predict', argv + ['--device', 'cpu', '--accelerate', 'none']) == 0
    out = checkout_copy / argv[argv.index('--output-dir') + 1]
    stem = Path(argv[-1]).stem
    image = cv2.imread(str(checkout_copy / argv[-1]))
    labels = cv2.imread(str(out / f'{stem}_labels.png'), cv2.IMREAD_UNCHANGED)
    assert labels.shape == image.shape[:2]
    assert (out / f'{stem}_overlay.png').is_file() and (out / f'{stem}_color.png').is_file()
    assert len(set(labels.ravel().tolist())) > 3  # a street, not one class


def test_readme_seg_eval_runs_as_written(checkout_copy, capsys):
    argv = readme_command('seg-eval')
    assert run('seg-eval', argv + ['--device', 'cpu', '--workers', '0']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['num_images'] == 4
    assert report['miou'] >= 0.55  # models/README.md: 0.596 on these four frames
