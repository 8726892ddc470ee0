"""The examples in the NIfTI modules' docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lake.nifti",
    "lake.nifti._convert",
    "lake.nifti._derive",
    "lake.nifti._parameters",
    "lake.nifti._geometry",
    "lake.nifti._write",
    "tests.nifti_synth",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
