"""The scope cube is generated from the scope data: the highlighted voxels must equal scope_mask."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from normcourse.book.figures import NORM_COLORS, cube_voxels, scope_cube, scope_cubes, use_style  # noqa: E402
from normcourse.reference.scopes import scope_mask  # noqa: E402

IMAGE_SHAPE = (4, 6, 2, 3)
SEQUENCE_SHAPE = (3, 5, 8)


def _expected_cube(norm, layout, shape, index, num_groups):
    mask = scope_mask(norm, layout, shape, index, num_groups=num_groups)
    return mask.reshape(shape[0], shape[1], -1) if layout == "NCHW" else mask


CASES = [
    ("batch_norm", "NCHW", IMAGE_SHAPE, (1, 2, 0, 1), None),
    ("layer_norm", "NCHW", IMAGE_SHAPE, (2, 0, 1, 2), None),
    ("instance_norm", "NCHW", IMAGE_SHAPE, (3, 5, 1, 0), None),
    ("group_norm", "NCHW", IMAGE_SHAPE, (0, 4, 0, 0), 3),
    ("group_norm", "NCHW", IMAGE_SHAPE, (0, 4, 0, 0), 1),
    ("rms_norm", "NCHW", IMAGE_SHAPE, (1, 1, 1, 1), None),
    ("batch_norm", "BSD", SEQUENCE_SHAPE, (0, 2, 3), None),
    ("layer_norm", "BSD", SEQUENCE_SHAPE, (2, 4, 0), None),
    ("instance_norm", "BSD", SEQUENCE_SHAPE, (1, 0, 7), None),
    ("rms_norm", "BSD", SEQUENCE_SHAPE, (1, 3, 2), None),
]


@pytest.mark.parametrize("norm,layout,shape,index,groups", CASES)
def test_cube_voxels_equal_scope_mask(norm, layout, shape, index, groups):
    got = cube_voxels(norm, layout, shape, index, groups)
    np.testing.assert_array_equal(got, _expected_cube(norm, layout, shape, index, groups))


@pytest.mark.parametrize("norm,layout,shape,index,groups", CASES)
def test_drawn_voxels_are_exactly_the_scope(norm, layout, shape, index, groups):
    ax = plt.figure().add_subplot(projection="3d")
    drawn = scope_cube(ax, norm, layout, shape, index=index, num_groups=groups)
    expected = {tuple(int(i) for i in ijk) for ijk in np.argwhere(_expected_cube(norm, layout, shape, index, groups))}
    assert set(drawn) == expected
    plt.close("all")


def test_known_sizes_of_the_four_image_scopes():
    # N=4, C=6, H*W=6: BN sees one channel of every image, LN one whole image, IN one channel of one
    # image, GN with 3 groups two channels of one image.
    sizes = {norm: int(cube_voxels(norm, "NCHW", IMAGE_SHAPE, num_groups=3).sum())
             for norm in ("batch_norm", "layer_norm", "instance_norm", "group_norm")}
    assert sizes == {"batch_norm": 4 * 6, "layer_norm": 6 * 6, "instance_norm": 6, "group_norm": 2 * 6}


def test_padding_is_drawn_but_still_counted_in_the_scope():
    padding = np.zeros(SEQUENCE_SHAPE[:2], dtype=bool)
    padding[1, 3:] = True
    ax = plt.figure().add_subplot(projection="3d")
    drawn = scope_cube(ax, "batch_norm", "BSD", SEQUENCE_SHAPE, padding=padding)
    assert set(drawn) == {tuple(int(i) for i in ijk)
                          for ijk in np.argwhere(_expected_cube("batch_norm", "BSD", SEQUENCE_SHAPE,
                                                                (0, 0, 0), None))}
    with pytest.raises(ValueError, match="padding must have shape"):
        scope_cube(ax, "batch_norm", "BSD", SEQUENCE_SHAPE, padding=padding[:, :2])
    with pytest.raises(ValueError, match="only meaningful"):
        scope_cube(ax, "batch_norm", "NCHW", IMAGE_SHAPE, padding=padding)
    plt.close("all")


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layouts"):
        cube_voxels("layer_norm", "NC", (2, 3))


def test_panel_renders_with_agg(tmp_path):
    use_style()
    fig, axes, drawn = scope_cubes(norms=("batch_norm", "layer_norm", "instance_norm", ("group_norm", 3)),
                                   shape=IMAGE_SHAPE)
    assert len(axes) == len(drawn) == 4
    assert axes[3].get_title() == "GroupNorm (G=3)"
    out = tmp_path / "cube.png"
    fig.savefig(out)
    assert out.stat().st_size > 5000
    # the highlighted faces carry the norm's colour; matplotlib shades each face by a scalar factor,
    # so compare the direction of the RGB vector (1e-6: float32 colours inside matplotlib)
    face = np.asarray(next(iter(drawn[0].values())).get_facecolor()[0][:3])
    want = np.asarray(matplotlib.colors.to_rgb(NORM_COLORS["batch_norm"]))
    np.testing.assert_allclose(face / np.linalg.norm(face), want / np.linalg.norm(want), atol=1e-6)
    plt.close(fig)


def test_style_and_colors_unchanged():
    use_style()
    assert matplotlib.rcParams["axes.spines.top"] is False
    assert set(NORM_COLORS) >= {"batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm"}


def test_table_renders_html_markdown_and_text():
    from normcourse.book.figures import Table

    table = Table(["norm", "axes <reduced>"], [("batch_norm", "N,H,W"), ("layer_norm", 3)])
    html = table._repr_html_()
    assert html.count("<tr>") == 3 and "&lt;reduced&gt;" in html
    assert table._repr_markdown_().splitlines()[2] == "| batch_norm | N,H,W |"
    assert repr(table).splitlines()[2].split() == ["layer_norm", "3"]
    with pytest.raises(ValueError, match="cells"):
        Table(["a", "b"], [(1,)])


def test_band_draws_the_median_and_the_range_over_seeds():
    from normcourse.book.figures import band

    runs = np.array([[1.0, 5.0, 2.0], [3.0, 1.0, np.nan], [2.0, 3.0, 4.0]])
    fig, ax = plt.subplots()
    (line,) = band(ax, [0, 1, 2], runs, "red", "median", marker="o")
    np.testing.assert_array_equal(line.get_ydata(), [2.0, 3.0, 3.0])       # NaN left out of the median
    (area,) = ax.collections
    vertices = area.get_paths()[0].vertices
    assert vertices[:, 1].min() == 1.0 and vertices[:, 1].max() == 5.0       # the band spans min..max
    assert line.get_label() == "median" and line.get_marker() == "o"
    plt.close(fig)
