"""The figure helpers draw what they are given (pixels checked, not just 'no exception')."""
import numpy as np

from safecfg_core.plotting import image_grid, line_plot, to_uint8


def test_grid_places_each_image_at_its_cell():
    red = np.zeros((8, 8, 3))
    red[..., 0] = 1.0
    blue = np.zeros((8, 8, 3))
    blue[..., 2] = 1.0
    grid = np.asarray(image_grid([[red, blue]], scale=1, pad=4))
    assert tuple(grid[4 + 3, 4 + 3]) == (255, 0, 0)          # first cell
    assert tuple(grid[4 + 3, 4 + 8 + 4 + 3]) == (0, 0, 255)  # second cell


def test_line_plot_draws_series_colour():
    img = np.asarray(line_plot({"loss": [3.0, 2.0, 1.0]}, size=(200, 120)))
    assert ((img[..., 0] == 31) & (img[..., 1] == 119) & (img[..., 2] == 180)).sum() > 50


def test_to_uint8_clips():
    assert to_uint8(np.array([[[-1.0, 0.5, 2.0]]])).tolist() == [[[0, 128, 255]]]
