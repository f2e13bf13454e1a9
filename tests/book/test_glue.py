"""normcourse.book.glue writes the same output as myst_nb.glue, which the {glue:text} role reads."""

from unittest import mock

import numpy as np
import pytest

import normcourse.book.glue as ours
from myst_nb.ext import glue as theirs


def _recorded(glue_function, patch_target, name, value, display):
    with mock.patch(patch_target) as show:
        glue_function(name, value, display=display)
    assert show.call_count == 1
    return show.call_args


@pytest.mark.parametrize("display", [False, True])
@pytest.mark.parametrize("value", [0.123456789, np.float64(2.5e-7), 42, "96.1 [95.4, 97.0]",
                                   np.array([1.0, 2.0])])
def test_same_output_as_myst_nb(value, display):
    expected = _recorded(theirs.glue, "myst_nb.ext.glue.ipy_display", "key", value, display)
    actual = _recorded(ours.glue, "IPython.display.display", "key", value, display)
    assert actual == expected
    bundle = actual.args[0]
    assert all(k.startswith(ours.HIDDEN_PREFIX) != display for k in bundle)
    assert actual.kwargs["metadata"]["scrapbook"] == {"name": "key",
                                                      "mime_prefix": "" if display else theirs.GLUE_PREFIX}


def test_hidden_prefix_is_myst_nbs():
    assert ours.HIDDEN_PREFIX == theirs.GLUE_PREFIX
