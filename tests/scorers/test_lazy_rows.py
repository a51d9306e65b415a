"""Features.take keeps the fine patch vectors as a view of the cache: no copy, the same values and fits."""

import numpy as np
import torch

from image_classification.patch_gaussian import PatchGaussian
from image_classification.scorers.base import Features, LazyRows


def test_a_view_reads_the_rows_it_selects_and_selects_again_without_copying():
    base = torch.arange(10 * 3 * 2, dtype=torch.float16).reshape(10, 3, 2)
    view = Features(fine_patches=base).take(np.array([7, 2, 5, 9])).fine_patches
    assert isinstance(view, LazyRows) and view.tensor is base  # the cache's tensor itself, nothing gathered yet
    assert view.shape == (4, 3, 2) and len(view) == 4 and view.dtype == torch.float16
    torch.testing.assert_close(view[1:3], base[[2, 5]])
    torch.testing.assert_close(view[-1], base[9])
    narrower = view[np.array([3, 0])]
    assert narrower.tensor is base
    torch.testing.assert_close(narrower[:], base[[9, 7]])
    torch.testing.assert_close(view[torch.tensor([False, True, False, True])][:], base[[2, 9]])
    torch.testing.assert_close(Features(fine_patches=view).take(np.array([2])).fine_patches[:], base[[5]])


def test_the_patch_gaussian_fits_and_measures_the_same_through_a_view():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(40, 16, 6, generator=generator).half()
    rows = np.arange(3, 40, 2)
    copied, viewed = PatchGaussian.fit(base[rows], rows=5), PatchGaussian.fit(LazyRows.of(base, rows), rows=5)
    torch.testing.assert_close(viewed.mean, copied.mean)
    torch.testing.assert_close(viewed.whitening, copied.whitening)
    torch.testing.assert_close(copied.distances(LazyRows.of(base, rows[:7]), rows=3), copied.distances(base[rows[:7]]))


def test_a_view_of_an_array_shares_its_memory():
    """An array (a memory-mapped cache read by numpy) is viewed, not copied: the served defect maps pass one."""
    base = np.arange(5 * 4 * 3, dtype=np.float16).reshape(5, 4, 3)
    view = Features(fine_patches=base).take(np.array([4, 1])).fine_patches
    assert isinstance(view, LazyRows) and np.shares_memory(view.tensor.numpy(), base)
    torch.testing.assert_close(view[:], torch.from_numpy(base[[4, 1]]))
