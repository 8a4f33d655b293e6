"""bf16 and autocast: the bf16 multinomial op against its definitions, every public op inside
torch.autocast (each argument form, both impls, both backends), and --precision's checks.

Tolerances, and why:
- The bf16 multinomial op and its reference on the same bf16 tensors read the logits of the
  same bf16 GEMM (float32 accumulation over the hidden width, rounded once), then reduce in
  float32 and float64: the loss differs by float32 rounding only (rtol 1e-4).
- Their gradients both round the logit gradient G to bf16 for the backward GEMMs, but form
  it with different exps, so an element of G may round to the neighbouring bf16; the
  GEMMs carry such flips into dh, dW and db, which are rounded once more. Bound, per
  element: four ulps (2^-6) of |G| |W|, |G|^T |h| and the column sums of |G|, plus 2^-8 of
  the value (conftest.bf16_gradient_bounds).
- Against the float64 definition on the same (bf16-rounded) inputs, the bf16 op's only
  error is the logits' rounding, |dz| <= 2^-9 |z| (2^-8 allowing a GEMM's float32 sum to
  straddle a rounding boundary), so a row's c_i lse_i - sum z moves by at most
  2 c_i 2^-8 max|z_i|: the loss's bound, computed per case.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from conftest import assert_within_bf16_bounds, bf16_gradient_bounds, random_csr
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec import precision
from deeprec.config import Config, ConfigError
from deeprec.csr import column_index
from deeprec.ops import (
    BACKENDS,
    masked_mse,
    multinomial_nll,
    multinomial_nll_reference,
    sparse_linear,
    sparse_output_mse,
)
from deeprec.training.plan import plan

pytestmark = pytest.mark.usefixtures("native_required")
BF16 = torch.bfloat16
CPU = torch.device("cpu")


def leaves(B, N, H, dtype, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    shapes = (((B, H), scale), ((N, H), scale), ((N,), 1.0))
    return [(torch.randn(*s, generator=g) * k).to(dtype).requires_grad_() for s, k in shapes]


def loss_and_grads(fn, params):
    y = fn(*params)
    return y, torch.autograd.grad(y, params)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 9), N=st.integers(1, 150), H=st.integers(1, 40),
       chunk=st.integers(1, 160), density=st.floats(0, 1), seed=st.integers(0, 10_000))  # fmt: skip
def test_bf16_multinomial_equals_its_definitions(backend, B, N, H, chunk, density, seed):
    crow, col, _ = random_csr(B, N, density, seed=seed)
    params = leaves(B, N, H, BF16, seed)
    got, got_g = loss_and_grads(
        lambda h, W, b: multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=chunk,
                                        backend=backend), params)  # fmt: skip
    want, want_g = loss_and_grads(lambda h, W, b: multinomial_nll_reference(h, W, b, crow, col),
                                  params)  # fmt: skip
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert all(a.dtype == BF16 for a in got_g)
    assert_within_bf16_bounds(got_g, want_g, bf16_gradient_bounds(*params, crow, col))
    # the float64 definition on the same rounded inputs: only the logits' rounding differs
    exact = [p.detach().double() for p in params]
    z = torch.nn.functional.linear(*exact)
    counts = (crow[1:] - crow[:-1]).double()
    bound = float((2 * counts * 2**-8 * z.abs().amax(1)).sum() / B) + 1e-6
    want64 = multinomial_nll_reference(*exact, crow, col)
    diff = abs(float(got.detach()) - float(want64))
    assert diff <= bound, (float(got.detach()), float(want64), bound)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 9), N=st.integers(1, 150), H=st.integers(1, 40),
       chunk=st.integers(1, 160), seed=st.integers(0, 10_000))  # fmt: skip
def test_bf16_activations_over_float32_master_weights(backend, B, N, H, chunk, seed):
    """h in bf16, the weight and bias float32 (what autocast hands the op): the weight rows
    are cast a chunk at a time, and the result is the op on the whole weight cast to bf16,
    with float32 gradients for the float32 weights (same tolerances as above)."""
    crow, col, _ = random_csr(B, N, 0.4, seed=seed)
    h, W, b = leaves(B, N, H, torch.float32, seed)
    hb = h.detach().to(BF16).requires_grad_()
    got, got_g = loss_and_grads(
        lambda h, W, b: multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=chunk,
                                        backend=backend), [hb, W, b])  # fmt: skip
    assert [g.dtype for g in got_g] == [BF16, torch.float32, torch.float32]
    Wb, bb = (t.detach().to(BF16).requires_grad_() for t in (W, b))
    want, want_g = loss_and_grads(lambda h, W, b: multinomial_nll_reference(h, W, b, crow, col),
                                  [hb, Wb, bb])  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert_within_bf16_bounds(got_g, want_g, bf16_gradient_bounds(hb, Wb, bb, crow, col))


def test_bf16_logits_that_would_overflow_exp_unshifted():
    """Logits of a few hundred: exp overflows float32 unless each row's maximum is taken
    from the bf16 logits exactly as the softmax reads them."""
    crow, col, _ = random_csr(5, 300, 0.1, seed=3)
    params = leaves(5, 300, 6, BF16, 7, scale=12.0)
    for backend in BACKENDS:
        got = multinomial_nll(*params, (crow, col), impl="fused", chunk=64, backend=backend)
        want = multinomial_nll_reference(*params, crow, col)
        assert torch.isfinite(got)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=0)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(0, 9), N=st.integers(1, 300), density=st.floats(0, 1),
       seed=st.integers(0, 10_000))  # fmt: skip
def test_bf16_masked_mse_equals_its_definition(B, N, density, seed):
    """bf16 output and ratings: the loss (float32, summed in double) as the reference computes
    it in float32 from the same bf16 values; the bf16 gradient 2 (o - r) / nnz within one
    bf16 rounding (2^-8 relative) of the reference's, which rounds it once too."""
    crow, col, val = random_csr(B, N, density, seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = (torch.randn(B, N, generator=g) * 3).to(BF16).requires_grad_()
    val = val.to(BF16)
    got = masked_mse(out, (crow, col, val), impl="fused")
    want = masked_mse(out, (crow, col, val), impl="reference")
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    (a,) = torch.autograd.grad(got, out)
    (w,) = torch.autograd.grad(want, out)
    assert a.dtype == BF16
    err = (a.double() - w.double()).abs()
    assert bool((err <= 2**-8 * w.double().abs() + 1e-30).all()), float(err.max())


# ------------------------------------------------------------------ every op under autocast
def _batch(B=6, N=40, seed=1):
    crow, col, val = random_csr(B, N, 0.3, seed=seed, dtype=torch.float32)
    return crow, col, val


FORMS = {  # how a caller hands the layer's activations in: float32, or already bf16
    "float32": lambda t: t,
    "bf16": lambda t: t.to(BF16),
}


def _autocast_cases(B=6, N=40, H=8):
    """(name, call(h, W, b, out, impl, backend) -> loss, the dtype the rule casts h to, the
    dtype it casts the dense output to)."""
    crow, col, val = _batch(B, N)
    index = column_index(crow, col)
    return [
        ("masked_mse", lambda h, W, b, out, impl, backend: masked_mse(
            out, (crow, col, val.to(out.dtype)), impl=impl), torch.float32, BF16),
        ("sparse_linear", lambda h, W, b, out, impl, backend: sparse_linear(
            (crow, col, val), W, None, index=index, impl=impl, backend=backend).sum(),
            torch.float32, torch.float32),
        ("sparse_output_mse", lambda h, W, b, out, impl, backend: sparse_output_mse(
            h, W, b, (crow, col, val), index=index, impl=impl, backend=backend),
            torch.float32, torch.float32),
        ("multinomial_nll", lambda h, W, b, out, impl, backend: multinomial_nll(
            h, W, b, (crow, col), impl=impl, chunk=7, backend=backend), BF16, torch.float32),
    ]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("case", range(4))
def test_every_op_under_autocast_follows_its_rule(case, form, impl, backend):
    """Inside torch.autocast(cpu, bf16): each op casts as its rule says (the sparse layers to
    float32; masked MSE the output and ratings to bf16; the multinomial op h to bf16, its
    float32 master weights kept), returns a float32 loss, equals the op called outside
    autocast on the arguments so cast, and hands the caller's tensors gradients of their own
    dtypes."""
    name, call, computes_in, output_in = _autocast_cases()[case]
    g = torch.Generator().manual_seed(case)
    h0, W0, b0 = (torch.randn(*s, generator=g) for s in ((6, 8), (40, 8), (40,)))
    out0 = torch.randn(6, 40, generator=g)
    h, out = (FORMS[form](t).requires_grad_() for t in (h0, out0))
    W, b = W0.clone().requires_grad_(), b0.clone().requires_grad_()  # master weights: float32
    with torch.autocast("cpu", dtype=BF16):
        got = call(h, W, b, out, impl, backend)
    assert got.dtype == torch.float32, name
    got_g = torch.autograd.grad(got, (h, W, b, out), allow_unused=True)
    for grad, leaf in zip(got_g, (h, W, b, out), strict=True):
        assert grad is None or grad.dtype == leaf.dtype, (name, grad.dtype, leaf.dtype)
    # outside autocast, on the arguments the rule casts to
    cast = [h.detach().to(computes_in).requires_grad_(), *(t.detach().requires_grad_()
                                                           for t in (W, b))]  # fmt: skip
    cast.append(out.detach().to(output_in).requires_grad_())
    want = call(*cast, impl, backend)
    want_g = torch.autograd.grad(want, cast, allow_unused=True)
    torch.testing.assert_close(got, want.float(), rtol=0, atol=0)
    for a, w in zip(got_g, want_g, strict=True):
        assert (a is None) == (w is None)
        if a is not None:
            # the caller's leaf gets the rule's gradient rounded once to its dtype
            torch.testing.assert_close(a, w.to(a.dtype), rtol=0, atol=0)


def test_raw_ops_under_autocast_take_their_rules_too():
    """torch.ops.deeprec.* inside autocast, not only the public wrappers: float32 math for
    the sparse output layer, bf16 GEMMs for the multinomial op (over its float32 weight)."""
    crow, col, val = _batch()
    index = column_index(crow, col)
    h, W, b = leaves(6, 40, 8, torch.float32, 0)
    with torch.autocast("cpu", dtype=BF16):
        loss, resid = torch.ops.deeprec.sparse_output_mse(
            h.to(BF16), W, b, crow, col, val, *index, False, "native"
        )
        nll, lse = torch.ops.deeprec.multinomial_nll(h, W, b, crow, col, 7, "native")
    assert loss.dtype == resid.dtype == torch.float32
    assert nll.dtype == lse.dtype == torch.float32
    want = multinomial_nll_reference(h.to(BF16), W, b, crow, col)
    torch.testing.assert_close(nll, want, rtol=1e-4, atol=0)


def test_float64_is_never_lowered_by_autocast():
    crow, col, _ = _batch()
    params = leaves(6, 40, 8, torch.float64, 0)
    with torch.autocast("cpu", dtype=BF16):
        got = multinomial_nll(*params, (crow, col), impl="fused", chunk=7)
    assert got.dtype == torch.float64
    want = multinomial_nll_reference(*params, crow, col)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ --precision
def test_tf32_is_refused_off_cuda():
    with pytest.raises(ConfigError, match="tf32 is a CUDA setting"):
        plan(Config(precision="tf32"), CPU)


def test_bf16_is_refused_where_the_cpu_lacks_bf16_instructions(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: [])
    with pytest.raises(ConfigError, match=r"no bf16 instructions .* 44-499x slower"):
        plan(Config(precision="bf16"), CPU)
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: None)
    with pytest.raises(ConfigError, match="cannot tell"):
        plan(Config(precision="bf16"), CPU)
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["amx_bf16"])
    assert plan(Config(precision="bf16", objective="multinomial"), CPU).precision == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    with pytest.raises(ConfigError, match="ONEDNN_MAX_CPU_ISA=AVX2"):
        plan(Config(precision="bf16"), CPU)


@pytest.mark.parametrize(
    "flags, machine, want",
    [
        ("fpu avx2 avx512f avx512_bf16 amx_bf16", "x86_64", ["avx512_bf16", "amx_bf16"]),
        ("fpu avx2 avx512f avx512bw", "x86_64", []),
        ("fp asimd bf16 sve", "aarch64", ["bf16"]),
    ],
)
def test_bf16_instructions_are_read_from_cpuinfo(tmp_path, monkeypatch, flags, machine, want):
    key = "Features" if machine == "aarch64" else "flags"
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\n")
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    assert precision.cpu_bf16_instructions(info) == want
    assert precision.cpu_bf16_instructions(tmp_path / "missing") is None


def test_the_command_refuses_a_precision_it_cannot_run_in_one_line(tmp_path):
    import os

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    for flags, says in (
        (["--precision", "tf32"], "tf32 is a CUDA setting"),
        (["--precision", "bf16"], "ONEDNN_MAX_CPU_ISA=AVX2"),
        (["--precision", "fp16"], "invalid choice"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "deeprec.train", *flags, "--epochs", "1", "--out",
             str(tmp_path / "run")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert r.returncode == 2, r.stderr
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        assert says in lines[-1], r.stderr


def test_bf16_training_keeps_float32_weights_and_state():
    """One bf16 step of Mult-DAE: the parameters, their gradients and Adam's moments stay
    float32, and the step moves the weights as the float32 step does, to bf16 accuracy."""
    from deeprec.model import AutoEncoder
    from deeprec.training.loop import batch_loss
    from deeprec.training.plan import TrainingPlan

    crow, col, _ = random_csr(16, 90, 0.2, seed=2, dtype=torch.float32)
    batch = type("B", (), {"crow": crow, "col": col, "index": column_index(crow, col)})()
    moved = {}
    for p in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = AutoEncoder(90, [24], activation="tanh", objective="multinomial")
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        path = TrainingPlan("sparse", objective="multinomial", precision=p)
        loss = batch_loss(model, batch, path)
        assert loss.dtype == torch.float32
        loss.backward()
        assert all(q.grad.dtype == torch.float32 for q in model.parameters())
        opt.step()
        state = [s for q in model.parameters() for s in opt.state[q].values() if s.dim()]
        assert all(s.dtype == torch.float32 for s in state)
        moved[p] = torch.cat([q.detach().flatten() for q in model.parameters()])
    torch.testing.assert_close(moved["bf16"], moved["fp32"], rtol=0, atol=2e-2 * 1.01)


def test_info_says_whether_this_cpu_trains_in_bf16():
    import os

    cases = (("", r"cpu_precision_bf16\s+(yes|refused)"),
             ("AVX2", r"cpu_precision_bf16\s+refused \(ONEDNN_MAX_CPU_ISA=AVX2"))  # fmt: skip
    for cap, says in cases:
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap}
        r = subprocess.run([sys.executable, "-m", "deeprec.info"], capture_output=True,
                           text=True, env=env, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert re.search(says, r.stdout), r.stdout
        assert re.search(r"cpu_bf16_instructions\s+\S", r.stdout), r.stdout


def test_bf16_for_the_rating_objective_runs_with_one_warning(monkeypatch, tmp_path):
    """Measured not to pay for the rating recipes: allowed, with one line saying so; the
    ranking objective gets no warning."""
    import warnings

    from deeprec.errors import PrecisionWarning

    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["avx512_bf16"])
    with pytest.warns(PrecisionWarning, match="rating objective"):
        assert plan(Config(precision="bf16"), CPU).precision == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan(Config(precision="bf16", objective="multinomial"), CPU)


def test_a_command_prints_the_precision_warning_in_one_line(capsys):
    import argparse
    import warnings

    from deeprec.cli import run
    from deeprec.errors import PrecisionWarning

    def main(args):
        warnings.warn("bf16 does not pay here", PrecisionWarning, stacklevel=2)
        return 0

    assert run(main, argparse.ArgumentParser(prog="deeprec.train"), []) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["deeprec.train: warning: bf16 does not pay here"], err


def test_models_trained_in_bf16_save_recommend_and_export_as_any(monkeypatch, tmp_path):
    """train --precision bf16, then recommend from a ranking model's run and export a rating
    model's: each checkpoint holds float32 weights and Adam state and serves like a float32
    model's. (The CPU's bf16 check is passed by hand: on a CPU without bf16 instructions
    these tiny runs are only slow.)"""
    from deeprec.export import cli_main as export_main
    from deeprec.recommend import cli_main as recommend_main
    from deeprec.train import cli_main as train_main

    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["avx512_bf16"])
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    for preset in ("topk", "seed"):
        run = tmp_path / preset
        flags = ["--preset", preset, "--fused", "--precision", "bf16", "--hidden", "16",
                 "--epochs", "1", "--max-batches", "2", "--quiet", "--out", str(run)]  # fmt: skip
        assert train_main(flags) == 0
        state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
        assert state["config"]["precision"] == "bf16"
        weights = [t for t in state["state_dict"].values() if t.is_floating_point()]
        assert weights and all(t.dtype == torch.float32 for t in weights)
        moments = list(_tensors(state["optimizer"]))  # torch's Adam, or the row-sparse one's
        assert moments and all(t.dtype == torch.float32 for t in moments)
    ranking, rating = str(tmp_path / "topk" / "model.pt"), str(tmp_path / "seed" / "model.pt")
    assert recommend_main(["--checkpoint", ranking, "--user", "3", "-k", "4", "--quiet"]) == 0
    assert export_main(["--checkpoint", rating, "--out", str(tmp_path / "m.onnx")]) == 0


def _tensors(tree):
    """Every non-scalar tensor in a nested state dict."""
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, torch.Tensor) and tree.dim():
        yield tree
