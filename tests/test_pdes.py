"""Built-in solvers checked against physics (not against themselves), and the dataset generator."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch_cfd.spectral import RK4CrankNicolsonStepper

from foundation.data import open_source
from foundation.pdes import FAMILIES, UnstableSettings, allen_cahn, generate, poisson, wave
from foundation.pdes.navier_stokes import VorticityEquation, initial_vorticity
from foundation.pdes.spectral import mesh, wavenumbers


# ------------------------------------------------------------------------------------------ Navier-Stokes
def test_taylor_green_vortex_decays_at_the_exact_rate():
    nu, n, dt, steps = 1e-2, 32, 2e-3, 100
    eq = VorticityEquation(n, nu)
    X, Y = mesh(n)
    w0 = 4 * math.pi * torch.sin(2 * math.pi * X) * torch.sin(2 * math.pi * Y)
    state = torch.fft.rfft2(w0)[None, None]
    stepper = RK4CrankNicolsonStepper()
    for _ in range(steps):
        state = stepper(state, dt, eq)
    w = torch.fft.irfft2(state[0, 0], s=(n, n))
    expected = math.exp(-8 * math.pi**2 * nu * dt * steps)  # |k|^2 = 8 pi^2 for the (1, 1) mode
    assert torch.allclose(w, expected * w0, atol=1e-6 * w0.abs().max().item())


def test_inviscid_flow_conserves_energy_and_enstrophy():
    n = 32
    eq = VorticityEquation(n, viscosity=0.0)
    w_hat = initial_vorticity("ns-gauss", 2, eq, torch.Generator().manual_seed(0))
    w_hat = w_hat * (eq.kx.abs() <= n / 3) * (eq.ky.abs() <= n / 3)  # inside the 2/3 band: a Galerkin system

    def invariants(state):
        u, v = eq.velocity(state[:, 0])
        w = torch.fft.irfft2(state[:, 0], s=(n, n))
        return (u**2 + v**2).mean(dim=(-2, -1)), (w**2).mean(dim=(-2, -1))

    state = w_hat[:, None]
    e0, z0 = invariants(state)
    stepper = RK4CrankNicolsonStepper()
    for _ in range(50):
        state = stepper(state, 1e-3, eq)
    e1, z1 = invariants(state)
    assert torch.allclose(e1, e0, rtol=1e-7) and torch.allclose(z1, z0, rtol=1e-7)
    assert not torch.allclose(torch.fft.irfft2(state[:, 0]), torch.fft.irfft2(w_hat))  # and it did move


@pytest.mark.parametrize("family", ["ns-sines", "ns-gauss", "ns-pwc", "ns-sl", "ns-kf", "ns-tracer-pwc"])
def test_navier_stokes_families_give_divergence_free_velocities(family):
    fam = FAMILIES[family]
    out = fam.simulate(2, 32, 3, torch.Generator().manual_seed(1), "cpu", **fam.params)
    assert out.fields.shape == (2, 3, len(fam.channel_names), 32, 32) and torch.isfinite(out.fields).all()
    u, v = out.fields[:, :, 0].double(), out.fields[:, :, 1].double()
    kx, ky = wavenumbers(32)
    keep = torch.ones(32, 32)
    keep[16, :], keep[:, 16] = 0, 0  # the Nyquist row and column carry no derivative on an even grid
    div = torch.fft.ifft2(keep * (1j * kx * torch.fft.fft2(u) + 1j * ky * torch.fft.fft2(v))).real
    grad = torch.fft.ifft2(keep * 1j * kx * torch.fft.fft2(u)).real
    assert div.abs().max() < 1e-5 * grad.abs().max()  # float32 output of an exactly solenoidal field
    assert out.times[0] == 0.0 and out.times[-1] == 1.0 and out.settings["steps"] > 0
    if family == "ns-kf":
        assert out.static.shape == (2, 1, 32, 32)


def test_navier_stokes_refuses_unstable_settings():
    fam = FAMILIES["ns-sines"]
    with pytest.raises(UnstableSettings, match="cfl"):
        fam.simulate(1, 32, 2, torch.Generator(), "cpu", cfl=1.5)
    with pytest.raises(UnstableSettings, match="resolution"):
        fam.simulate(1, 8, 2, torch.Generator(), "cpu")


# ------------------------------------------------------------------------------------------ wave
def test_wave_energy_is_conserved_with_constant_speed():
    n = 32
    X, Y = mesh(n)
    kx, ky = wavenumbers(n)
    u = wave.gaussian_bumps(X, Y, torch.Generator().manual_seed(0), 3, (0.05, 0.1), (-1, 1))[None]
    v = torch.zeros_like(u)
    c2 = torch.full_like(u, 1.3**2)
    e0 = wave.energy(u, v, c2, kx, ky)
    drifts = []
    for cfl in (0.5, 0.25):  # leapfrog: the energy error is a bounded O(dt^2) oscillation, not a drift
        dt = cfl * wave.max_stable_dt(1.3, n)
        steps = round(0.8 / dt)
        u1, v1 = wave.step(u, v, c2, kx**2 + ky**2, 0.8 / steps, steps)
        drifts.append(((wave.energy(u1, v1, c2, kx, ky) - e0).abs() / e0).item())
    assert drifts[0] < 5e-3 and 3.0 < drifts[0] / drifts[1] < 5.0
    assert (u1 - u).abs().max() > 0.1  # the waves travelled


def test_wave_standing_mode_converges_at_second_order_in_time():
    n = 16
    X, Y = mesh(n)
    kx, ky = wavenumbers(n)
    u0 = (torch.sin(2 * math.pi * X) * torch.sin(2 * math.pi * Y))[None]
    c2 = torch.ones_like(u0)
    exact = math.cos(2 * math.pi * math.sqrt(2) * 0.5) * u0
    errors = []
    for steps in (50, 100):
        u, _ = wave.step(u0, torch.zeros_like(u0), c2, kx**2 + ky**2, 0.5 / steps, steps)
        errors.append((u - exact).abs().max().item())
    assert errors[1] < 1e-3 and 3.5 < errors[0] / errors[1] < 4.5


def test_wave_families_and_stability_limit():
    for family in ("wave-gauss", "wave-layer"):
        out = FAMILIES[family].simulate(2, 16, 4, torch.Generator().manual_seed(0), "cpu")
        assert out.fields.shape == (2, 4, 1, 16, 16) and out.static.shape == (2, 1, 16, 16)
        assert out.static.min() > 0 and torch.isfinite(out.fields).all()
    with pytest.raises(UnstableSettings, match="leapfrog"):
        FAMILIES["wave-gauss"].simulate(1, 16, 2, torch.Generator(), "cpu", cfl=1.2)


# ------------------------------------------------------------------------------------------ Allen-Cahn
def test_allen_cahn_energy_decays_and_pure_phases_are_fixed_points():
    n, eps = 32, 0.05
    kx, ky = wavenumbers(n)
    u = allen_cahn.initial_condition(2, n, torch.Generator().manual_seed(0))
    energies = [allen_cahn.energy(u, eps, kx, ky)]
    for _ in range(20):
        u = allen_cahn.step(u, kx**2 + ky**2, eps, 0.02, 1)  # a large step: stability is unconditional
        energies.append(allen_cahn.energy(u, eps, kx, ky))
    energies = torch.stack(energies)
    assert (energies[1:] <= energies[:-1] + 1e-12).all() and (energies[-1] < 0.95 * energies[0]).all()
    ones = torch.ones(1, n, n, dtype=torch.float64)
    assert torch.allclose(allen_cahn.step(ones, kx**2 + ky**2, eps, 0.01, 10), ones, atol=1e-12)
    assert torch.allclose(allen_cahn.step(-ones, kx**2 + ky**2, eps, 0.01, 10), -ones, atol=1e-12)


def test_allen_cahn_refuses_unresolved_interfaces():
    with pytest.raises(UnstableSettings, match="not resolved"):
        FAMILIES["allen-cahn"].simulate(1, 16, 2, torch.Generator(), "cpu", eps=0.01)


# ------------------------------------------------------------------------------------------ continuing a state
@pytest.mark.parametrize("family, params", [("allen-cahn", {"eps": 0.05}), ("ns-kf", {}), ("ns-sines", {})])
def test_evolve_continues_a_stored_snapshot_as_the_simulation_did(family, params):
    # What `evolve` makes of a state must be the same dynamics `simulate` wrote, else the "true dynamics from the
    # model's state" of a horizon rollout would measure a different PDE.
    spec = FAMILIES[family]
    run = spec.simulate(2, 32, 5, torch.Generator().manual_seed(0), "cpu", **{**spec.params, **params, "t_end": 0.4})
    later = spec.evolve(run.fields[:, 1], float(run.times[4] - run.times[1]), **{**spec.params, **params})
    assert later.shape == run.fields[:, 4].shape and later.dtype == torch.float32
    error = (later - run.fields[:, 4]).norm() / run.fields[:, 4].norm()
    moved = (run.fields[:, 1] - run.fields[:, 4]).norm() / run.fields[:, 4].norm()
    assert error < 1e-4 and moved > 0.01  # float32 storage apart, the same states; and the states did change


# ------------------------------------------------------------------------------------------ Poisson
def test_poisson_manufactured_solutions():
    X, Y = poisson.nodes(24)
    u = torch.sin(math.pi * X) * torch.sin(2 * math.pi * Y)
    assert torch.allclose(poisson.solve(5 * math.pi**2 * u), u, atol=1e-12)  # sine modes are exact
    errors = []
    for n in (15, 31, 63):  # u = x(1-x)y(1-y): -lap u = 2[x(1-x) + y(1-y)]
        X, Y = poisson.nodes(n)
        exact = X * (1 - X) * Y * (1 - Y)
        errors.append((poisson.solve(2 * (X * (1 - X) + Y * (1 - Y))) - exact).abs().max().item())
    orders = [math.log2(errors[k] / errors[k + 1]) for k in range(2)]
    assert errors[-1] < 1e-4 and min(orders) > 1.8


def test_poisson_family_is_steady():
    out = FAMILIES["poisson-gauss"].simulate(3, 16, 1, torch.Generator().manual_seed(0), "cpu")
    assert out.fields.shape == (3, 1, 1, 16, 16) and out.static.shape == (3, 1, 16, 16)
    with pytest.raises(UnstableSettings, match="steady"):
        FAMILIES["poisson-gauss"].simulate(1, 16, 5, torch.Generator(), "cpu")


# ------------------------------------------------------------------------------------------ generator and CLI
def test_generate_is_reproducible_and_records_its_metadata(tmp_path: Path):
    a = generate("wave-gauss", 5, 16, tmp_path / "a.h5", snapshots=4, seed=3, batch=2, progress=False)
    b = generate("wave-gauss", 5, 16, tmp_path / "b.h5", snapshots=4, seed=3, batch=2, progress=False)
    c = generate("wave-gauss", 5, 16, tmp_path / "c.h5", snapshots=4, seed=4, batch=2, progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert np.array_equal(fa["fields"][...], fb["fields"][...])
        assert np.array_equal(fa["static"][...], fb["static"][...])
        assert not np.array_equal(fa["fields"][...], fc["fields"][...])
        assert fa["fields"].chunks == (1, 1, 1, 16, 16)
    source = open_source(a)
    assert source.info.pde["id"] == "wave-gauss" and source.info.pde["cfl"] == 0.5
    assert source.info.provenance["seed"] == 3 and source.info.provenance["settings"]["steps"] > 0
    assert source.info.static_names == ["c"] and source.info.static_mean is not None
    assert source.info.time_scale == 1.0 and source.info.splits["train"] == (0, 3)


def test_generate_burn_in_stores_the_later_snapshots_of_the_same_simulation(tmp_path: Path):
    # t_start: the solver runs from t = 0 on the same time grid, and only [t_start, t_start + t_end] is stored
    full = generate("ns-kf", 2, 16, tmp_path / "full.h5", snapshots=5, seed=1, progress=False, t_end=0.2)
    late = generate("ns-kf", 2, 16, tmp_path / "late.h5", snapshots=3, seed=1, progress=False, t_end=0.1, t_start=0.1)
    with h5py.File(full) as ff, h5py.File(late) as fl:
        assert np.array_equal(fl["fields"][...], ff["fields"][:, 2:])
        assert np.array_equal(fl["static"][...], ff["static"][...])
    info = open_source(late).info
    np.testing.assert_allclose(info.times, [0.0, 0.05, 0.1], atol=1e-12)
    assert info.time_scale == pytest.approx(0.1) and info.pde["t_start"] == 0.1
    assert info.provenance["settings"]["burn_in_snapshots"] == 2
    with pytest.raises(UnstableSettings, match="t_start=0.07 is not a multiple of the snapshot spacing 0.05"):
        generate("ns-kf", 1, 16, tmp_path / "x.h5", snapshots=3, progress=False, t_end=0.1, t_start=0.07)
    with pytest.raises(UnstableSettings, match="t_start"):
        generate("poisson-gauss", 1, 16, tmp_path / "y.h5", progress=False, t_start=0.5)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_generate_refuses_to_overwrite_and_leaves_nothing_when_killed(tmp_path: Path):
    out = tmp_path / "d.h5"
    generate("allen-cahn", 2, 16, out, snapshots=2, progress=False, eps=0.1)
    with pytest.raises(FileExistsError):
        generate("allen-cahn", 2, 16, out, snapshots=2, progress=False, eps=0.1)
    family = FAMILIES["allen-cahn"]
    calls = []

    def dies_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a Ctrl-C half-way through looks like
        return family.simulate(*args, **kwargs)

    FAMILIES["allen-cahn-killed"] = dataclasses.replace(family, id="allen-cahn-killed", simulate=dies_on_second_batch)
    try:
        with pytest.raises(KeyboardInterrupt):
            generate("allen-cahn-killed", 4, 16, tmp_path / "killed.h5", snapshots=2, batch=2, progress=False, eps=0.1)
    finally:
        del FAMILIES["allen-cahn-killed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


def test_cli_generate_and_clear_errors(tmp_path: Path, capsys):
    from foundation.pdes.__main__ import main

    out = tmp_path / "p.h5"
    argv = ["generate", "--pde", "poisson-gauss", "--n", "3", "--resolution", "16", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert open_source(out).info.steady
    capsys.readouterr()
    assert main([*argv[:-3], "--param", "cfl=3", "--out", str(tmp_path / "q.h5")]) == 2
    err = capsys.readouterr().err
    assert "unknown parameters ['cfl']" in err and "Traceback" not in err
    assert main(["generate", "--pde", "ns-foo", "--n", "1", "--resolution", "16", "--out", str(tmp_path / "r.h5")]) == 2
    assert "unknown PDE family 'ns-foo'" in capsys.readouterr().err
