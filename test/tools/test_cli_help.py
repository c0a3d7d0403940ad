"""Every command's --help: each option explained, defaults shown, required options marked."""

import argparse
import importlib

import pytest

COMMANDS = ['seg_perception.bag', 'seg_perception.predict', 'seg_perception.replay',
            'seg_perception.demo.cli', 'seg_training.evaluation.seg_eval', 'seg_training.export',
            'seg_training.nets.provenance', 'seg_training.synth.dataset',
            'seg_training.training.loop']


@pytest.mark.parametrize('module', COMMANDS)
def test_help_explains_every_option(module):
    parser = importlib.import_module(module).build_parser()
    text = ' '.join(parser.format_help().split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f'{module}: {name} has no help text'
        if action.required and action.option_strings:
            assert f'{name}' in text and '(required' in text, f'{module}: {name} not marked'
        default = action.default
        shown = not any(default is v for v in (None, True, False, argparse.SUPPRESS)) \
            and default != []
        if shown and action.option_strings:
            helptext = parser._get_formatter()._expand_help(action)
            assert 'default' in helptext, f'{module}: {name} does not say its default'


def test_required_options_are_marked_in_the_help():
    parser = importlib.import_module('seg_perception.bag').build_parser()
    text = ' '.join(parser.format_help().split())
    assert 'model file (.pt) (required)' in text
    assert '(default: 4)' in text  # --batch-size
    synth = importlib.import_module('seg_training.synth.dataset').build_parser()
    assert '(default: 0)' in ' '.join(synth.format_help().split())  # --seed 0 is shown too
