"""Tests for the photometric consistency loss (docs/METHOD.md §7)."""
import numpy as np
import pytest
import torch

from losses import SSIM, SSIM_C1, SSIM_C2, PhotometricLoss, photometric_input_mapping, photometric_loss


def ssim_reference(x, y):
    """Per-pixel SSIM dissimilarity in numpy float64, with explicit 3x3 windows."""
    x, y = x.double().numpy(), y.double().numpy()
    n, c, h, w = x.shape
    px = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")  # reflect: edge not repeated
    py = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            wx, wy = px[:, :, i:i + 3, j:j + 3], py[:, :, i:i + 3, j:j + 3]
            mx, my = wx.mean((2, 3)), wy.mean((2, 3))
            vx = (wx ** 2).mean((2, 3)) - mx ** 2
            vy = (wy ** 2).mean((2, 3)) - my ** 2
            cxy = (wx * wy).mean((2, 3)) - mx * my
            s = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx ** 2 + my ** 2 + SSIM_C1) * (vx + vy + SSIM_C2))
            out[:, :, i, j] = np.clip((1 - s) / 2, 0, 1)
    return torch.from_numpy(out)


def test_constants():
    assert SSIM_C1 == pytest.approx(1e-4) and SSIM_C2 == pytest.approx(9e-4)


def test_zero_for_identical_inputs():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert photometric_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert SSIM()(x, x).abs().max() < 1e-6


def test_positive_for_different_inputs():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    assert photometric_loss(x, y).item() > 0.05
    assert photometric_loss(x, x + 0.01).item() > 0


@pytest.mark.parametrize("c1,c2", [(0.2, 0.7), (0.5, 0.5), (0.9, 0.0), (0.0, 0.0)])
def test_constant_images(c1, c2):
    # float64, so that the variance terms (E[x^2] - E[x]^2) cancel exactly enough for a tight check
    x, y = torch.full((1, 3, 5, 5), c1, dtype=torch.float64), torch.full((1, 3, 5, 5), c2, dtype=torch.float64)
    ssim = (2 * c1 * c2 + SSIM_C1) / (c1 ** 2 + c2 ** 2 + SSIM_C1)  # the contrast term is C2 / C2 = 1
    term = min(max((1 - ssim) / 2, 0.0), 1.0)
    assert torch.allclose(SSIM()(x, y), torch.full_like(x, term), atol=1e-10)
    expected = 0.85 * term + 0.15 * abs(c1 - c2)
    assert photometric_loss(x, y).item() == pytest.approx(expected, abs=1e-10)
    # float32 (what training uses) agrees to float32 cancellation error
    assert photometric_loss(x.float(), y.float()).item() == pytest.approx(expected, abs=5e-5)


def test_ssim_matches_reference():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 6, 7, generator=g), torch.rand(2, 3, 6, 7, generator=g)
    y = 0.6 * x + 0.4 * y  # correlated, so SSIM is not trivially ~0
    assert torch.allclose(SSIM()(x.double(), y.double()), ssim_reference(x, y), atol=1e-10)
    assert torch.allclose(SSIM()(x, y).double(), ssim_reference(x, y), atol=1e-5)


def test_weights_015_l1_085_ssim():
    """With a known SSIM term, the loss is 0.85 * SSIM term + 0.15 * L1 averaged over channels."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 6, 6, generator=g), torch.rand(2, 3, 6, 6, generator=g)
    ssim_map = ssim_reference(x, y).mean(1)
    l1_map = (x - y).abs().double().mean(1)
    loss = PhotometricLoss()
    assert torch.allclose(loss.per_pixel(x.double(), y.double()), 0.85 * ssim_map + 0.15 * l1_map, atol=1e-10)
    assert torch.allclose(loss.per_pixel(x, y).double(), 0.85 * ssim_map + 0.15 * l1_map, atol=1e-5)
    assert loss(x, y).item() == pytest.approx((0.85 * ssim_map + 0.15 * l1_map).mean().item(), abs=1e-5)
    # a constant shift d of a constant image: SSIM term from the formula, L1 = d
    a = torch.full((1, 3, 4, 4), 0.3, dtype=torch.float64)
    b = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    term = (1 - (2 * 0.3 * 0.5 + SSIM_C1) / (0.3 ** 2 + 0.5 ** 2 + SSIM_C1)) / 2
    assert photometric_loss(a, b).item() == pytest.approx(0.85 * term + 0.15 * 0.2, abs=1e-10)
    only_l1 = PhotometricLoss(ssim_weight=0.0)
    assert only_l1(a, b).item() == pytest.approx(0.2, abs=1e-10)
    # SSIM only sees structure, L1 only the shift: per-channel different shifts average over channels
    c = a + torch.tensor([0.0, 0.1, 0.4], dtype=torch.float64)[None, :, None, None]
    assert only_l1(a, c).item() == pytest.approx(0.5 / 3, abs=1e-10)


def test_inputs_used_directly():
    """No (x + 1) / 2 remapping: the loss on [0, 1] values differs from the remapped one."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(1, 3, 6, 6, generator=g), torch.rand(1, 3, 6, 6, generator=g)
    direct = 0.85 * ssim_reference(x, y).mean() + 0.15 * (x - y).abs().double().mean()
    assert photometric_loss(x, y).item() == pytest.approx(direct.item(), abs=1e-5)


def test_gradients_flow_to_prediction():
    g = torch.Generator().manual_seed(4)
    pred = torch.rand(2, 3, 8, 8, generator=g).requires_grad_(True)
    target = torch.rand(2, 3, 8, 8, generator=g).requires_grad_(True)
    photometric_loss(pred, target).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # gradient descent on the prediction reduces the loss
    with torch.no_grad():
        before = photometric_loss(pred, target).item()
        after = photometric_loss(pred - 0.5 * pred.grad / pred.grad.norm(), target).item()
    assert after < before


def test_published_photometric_input_is_shifted_into_half_the_range():
    """photometric_input "shifted" (published): both [0, 1] maps go through (x + 1) / 2 first, which halves
    the L1 and weakens the SSIM term; "unit" (the correction) compares them as they are."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64), torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    shifted, unit = photometric_input_mapping("shifted"), photometric_input_mapping("unit")
    assert torch.equal(shifted(x), (x + 1) / 2) and unit(x) is x
    ssim_shifted, l1_shifted = photometric_loss.components(shifted(x), shifted(y))
    ssim_unit, l1_unit = photometric_loss.components(unit(x), unit(y))
    torch.testing.assert_close(l1_shifted, l1_unit / 2)
    assert (ssim_shifted.mean() < ssim_unit.mean()) and photometric_loss(x, y) > photometric_loss(shifted(x), shifted(y))
    with pytest.raises(ValueError, match="photometric input"):
        photometric_input_mapping("half")
