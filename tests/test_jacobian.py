"""Input-Jacobian norms: exact against finite differences, the projection estimate against exact."""

from __future__ import annotations

import copy

import torch

from uncertainty_robust.jacobian import jacobian_norms, jacobian_norms_estimate


def _fd_jacobian(f, x: torch.Tensor, h: float) -> torch.Tensor:
    """Central differences along every input pixel: (K, D) for one image x."""
    d = x.numel()
    e = torch.eye(d, dtype=x.dtype).view(d, *x.shape) * h
    with torch.no_grad():
        cols = [(f(x + e[i : i + 392]) - f(x - e[i : i + 392])) / (2 * h) for i in range(0, d, 392)]
    return torch.cat(cols).T


def test_exact_jacobian_matches_finite_differences(std_model, mnist_test):
    """In float64, on 4 real digits: the whole 10 x 784 Jacobian by central differences along every
    pixel, and J v along random directions, against ``jacobian_norms`` and autograd; relative error
    < 1e-4 (central differences with h=1e-6 are exact for the piecewise-linear logits up to a
    rounding floor of ~1e-16/h relative to the outputs, which for the tiny softmax Jacobian of a
    confident digit is ~1e-5 relative).

    The images get a 1e-2 dither: on a raw MNIST digit the 2x2 max-pools over the constant
    background hold exact ties, where the ReLU/max-pool network is not differentiable and central
    differences average one-sided slopes; a dithered digit is a generic (differentiable) point."""
    md = copy.deepcopy(std_model).double().eval()
    g = torch.Generator().manual_seed(0)
    x = mnist_test[0][[0, 37, 101, 250]].double()
    x = x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * 2e-2
    exact = jacobian_norms(md, x)
    exact32 = jacobian_norms(std_model, x.float())
    assert all(bool((v > 0).all()) for v in exact.values())
    h, tol, worst = 1e-6, 1e-4, {}
    outputs = {"logits": md, "softmax": lambda t: torch.softmax(md(t), 1)}
    for name, f in outputs.items():
        errs = []
        for i in range(len(x)):
            j_fd = _fd_jacobian(f, x[i], h)
            j_ad = torch.autograd.functional.jacobian(lambda t, f=f: f(t[None])[0], x[i]).flatten(1)
            assert j_fd.shape == j_ad.shape == (10, 784)
            errs.append(float((j_fd - j_ad).norm() / j_ad.norm()))  # the whole matrix
            for ref in (j_fd.norm(), j_ad.norm()):  # the library's Frobenius norm against both
                errs.append(abs(float(exact[name][i] / ref) - 1))
            for _ in range(3):  # J v against (f(x+hv) - f(x-hv)) / 2h, random unit directions v
                v = torch.randn(x[i].shape, generator=g, dtype=torch.float64)
                v /= v.norm()
                with torch.no_grad():
                    jv_fd = (f((x[i] + h * v)[None]) - f((x[i] - h * v)[None]))[0] / (2 * h)
                jv = j_ad @ v.flatten()
                errs.append(float((jv - jv_fd).norm() / jv.norm()))
            assert abs(float(exact32[name][i] / exact[name][i]) - 1) < 1e-3  # the float32 path too
        worst[name] = max(errs)
    print(f"\nJacobian vs finite differences (float64): worst relative error {worst}")
    assert max(worst.values()) < tol


def test_projection_estimate_is_within_10_percent_of_exact(std_model, mnist_test):
    """8 random projections per example, on all 300 test points, against the exact norms.
    Compared: (a) the mean over points of the estimated per-example norm against the mean of the
    exact per-example norms (the number the estimate stands in for when logged per epoch), and
    (b) the mean over points of the per-example ratio estimate/exact. Both within 10%."""
    x = mnist_test[0]
    assert len(x) >= 200
    exact = jacobian_norms(std_model, x)
    est = jacobian_norms_estimate(std_model, x, projections=8, generator=torch.Generator().manual_seed(0))
    for name in ("logits", "softmax"):
        e, a = exact[name], est[name]
        assert e.shape == a.shape == (len(x),) and bool(torch.isfinite(a).all()) and bool((e > 0).all())
        of_means = float(a.mean() / e.mean()) - 1
        ratio = float((a / e).mean()) - 1
        print(
            f"\nJacobian ({name}), {len(x)} points: exact mean {float(e.mean()):.4g}, 8-projection "
            f"estimate mean {float(a.mean()):.4g} ({of_means:+.2%}); mean per-example ratio - 1 = {ratio:+.2%}"
        )
        assert abs(of_means) < 0.10 and abs(ratio) < 0.10
