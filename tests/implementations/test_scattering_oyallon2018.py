"""Paper properties of the first-order scattering front end (Oyallon et al., 2018), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from implementations.other.scattering_oyallon2018 import Config, Scattering1D, lowpass_filter, morlet_filter_bank


def test_wavelets_have_zero_mean_and_peak_at_their_centre_frequency() -> None:
    cfg = Config(J=2, Q=2)
    psi = morlet_filter_bank(cfg).squeeze(1).double()  # (2JQ, W)
    complex_psi = psi[0::2] + 1j * psi[1::2]  # (JQ, W)
    assert complex_psi.shape[0] == cfg.J * cfg.Q
    assert complex_psi.sum(-1).abs().max() < 1e-6  # no DC response
    n = 4096
    spectrum = torch.fft.fft(complex_psi, n).abs()  # (JQ, n)
    peaks = spectrum.argmax(-1).double() * 2 * math.pi / n
    expected = torch.tensor([cfg.xi0 * 2 ** (-lam / cfg.Q) for lam in range(cfg.J * cfg.Q)], dtype=torch.float64)
    assert torch.allclose(peaks, expected, atol=0.02)  # xi_lambda = xi_0 2^{-lambda/Q}
    assert lowpass_filter(cfg).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_output_shape_and_size_factor() -> None:
    for J, Q in ((1, 2), (2, 2), (3, 1)):
        scat = Scattering1D(Config(J=J, Q=Q))
        out = scat(torch.randn(4, 3, 40))
        assert out.shape == (4, 3 * (1 + J * Q), math.ceil(40 / 2**J))
        assert out[0].numel() / (3 * 40) == pytest.approx((1 + J * Q) / 2**J, rel=0.05)
    assert sum(p.numel() for p in Scattering1D().parameters()) == 0  # nothing is learned


def test_constant_signal_has_no_wavelet_energy_and_keeps_its_average() -> None:
    scat = Scattering1D(Config(J=2, Q=2))
    out = scat(torch.full((1, 1, 40), 3.0))  # (1, 1 + JQ, 10)
    assert torch.allclose(out[0, 0], torch.full((10,), 3.0), atol=1e-4)  # x * phi_J of a constant
    assert out[0, 1:].abs().max() < 1e-3  # |x * psi| = 0: the wavelets are zero-mean


def test_modulus_and_averaging_give_shift_invariance() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool1d(torch.randn(1, 1, 200, generator=gen), 5, 1, 2)  # smooth random signal
    shifted = torch.roll(x, 1, -1)
    scat = Scattering1D(Config(J=3, Q=1))
    rel_input = ((shifted - x).norm() / x.norm()).item()
    out, out_shifted = scat(x)[..., 2:-2], scat(shifted)[..., 2:-2]  # ignore the borders
    rel_scat = ((out_shifted - out).norm() / out.norm()).item()
    assert rel_scat < 0.5 * rel_input


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.other.scattering_oyallon2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run scattering_oyallon2018 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    assert {"full_cnn", "scattering", "raw_same_budget"} <= {row.name for row in result.rows}
    assert result.row("scattering").extra["learned_flops"] < result.row("scattering").flops
    assert result.answers and result.protocol.n_train == 500
    assert (tmp_path / "results" / "figures" / "scattering_oyallon2018_input_size.png").stat().st_size > 1000
