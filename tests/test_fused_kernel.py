"""The fused gather + interaction C kernel (``dlrm_bench/backends/fused.py``).

It must give what the torch ops give (``EmbeddingTables.stacked`` + ``Interaction``: the
reference layout and order), for fp32 and row-wise int8 tables, split and stacked, for batches
that are views of bigger ones (the chunked path), with its uint8 output equal to
``QuantizeInput`` of the float output; refuse ids outside a table; and, where it cannot be
built, say why, with the native backend recording that and still answering correctly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_helpers import make_batch

from dlrm_bench.backends import fused, native
from dlrm_bench.backends import native_int8 as q8
from dlrm_bench.backends.native_ops import (
    DenseLinear,
    EmbeddingTables,
    Interaction,
    fuse_tables,
)
from dlrm_bench.cpu import cpu_flags
from dlrm_bench.model import build_model
from dlrm_bench.presets import get_preset

pytestmark = pytest.mark.filterwarnings("ignore:the environment does not set:RuntimeWarning")

T, D = 26, 128
SIZES = tuple(100 + 37 * t for t in range(T))
WIDTH = D + T * (T + 1) // 2
HAS_KERNEL_CPU = set(fused.NEEDED_FLAGS) <= cpu_flags()


@pytest.fixture(autouse=True)
def fresh_kernel_state(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """Each test decides itself whether the kernel may load (``load`` caches its answer)."""
    monkeypatch.setenv(fused.ENV_CACHE, str(tmp_path_factory.getbasetemp() / "kernels"))
    fused.load.cache_clear()
    yield
    fused.load.cache_clear()


needs_kernel = pytest.mark.skipif(not HAS_KERNEL_CPU, reason="CPU lacks AVX-512 BW/VL/DQ")


def tables_and_batch(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tables = [torch.rand(n, D, generator=g) - 0.5 for n in SIZES]
    x = torch.randn(batch, D, generator=g)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in SIZES])
    return tables, x, ids


def torch_path(kind: str, weights: list[torch.Tensor], x, ids) -> torch.Tensor:
    tables = EmbeddingTables(kind, weights, SIZES)
    offsets = torch.arange(x.shape[0]).expand(T, -1)
    return Interaction(T)(tables.stacked(x, offsets, ids, True)).clone()


def expected_dots(kind: str, dots: str, amx: bool) -> str:
    """How GatherInteraction should compute the dot products on this CPU."""
    if kind == "fp32" or dots == "float32" or fused.NARROW_DOT_FLAGS[kind] not in cpu_flags():
        return "float32"
    amx_ok = fused.AMX_DOT_FLAGS[kind] in cpu_flags() and fused.load().dlrm_amx_ready()
    return "amx" if amx and amx_ok else "stored"


@needs_kernel
@pytest.mark.parametrize(("kind", "dots", "amx"), [
    ("fp32", "auto", False), ("int8", "auto", False), ("int8", "float32", False),
    ("int8", "auto", True)])
@pytest.mark.parametrize("batch", [1, 7, 300])
def test_kernel_equals_torch_ops(kind: str, dots: str, amx: bool, batch: int) -> None:
    """int8 rows: integer dot products on the stored rows (AVX512-VNNI, the default where the
    CPU has it), their Gram matrix on AMX tiles (where the precision allows AMX: ``amx``) and
    dequantized float32 rows all give the torch ops' float32 results."""
    tables, x, ids = tables_and_batch(batch)
    if kind == "int8":
        weights = [fuse_tables(tables, "int8")]
        bases = EmbeddingTables("int8", weights, SIZES).bases.view(-1).tolist()
        kernel = fused.GatherInteraction(weights, SIZES, "int8", bases=bases, dots=dots, amx=amx)
        assert kernel.dots == expected_dots(kind, dots, amx)
    else:
        weights = tables
        kernel = fused.GatherInteraction(weights, SIZES, "fp32")
        assert kernel.dots == "float32"
    expected = torch_path(kind, weights, x, ids)
    out = torch.full((batch, WIDTH), float("nan"))
    kernel(x, ids, out)
    assert not out.isnan().any(), "the kernel left outputs unwritten"
    assert torch.equal(out[:, :D], x), "the first D outputs are the dense features"
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


@needs_kernel
def test_stacked_fp32_table_and_views() -> None:
    """One stacked table with per-table bases; ``x`` and ``ids`` as views of a bigger batch."""
    tables, x_all, ids_all = tables_and_batch(600, seed=3)
    stacked = torch.cat(tables)
    bases = EmbeddingTables("fp32", [stacked], SIZES).bases.view(-1).tolist()
    kernel = fused.GatherInteraction([stacked], SIZES, "fp32", bases=bases)
    x, ids = x_all[200:450], ids_all[:, 200:450]  # ids: stride (600, 1), like a chunk
    out = torch.empty(250, WIDTH)
    kernel(x, ids, out)
    torch.testing.assert_close(out, torch_path("fp32", tables, x, ids), rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("amx", [False, True])
def test_quantized_output_matches_quantize_input(amx: bool) -> None:
    tables, x, ids = tables_and_batch(512, seed=5)
    weights = [fuse_tables(tables, "int8")]
    bases = EmbeddingTables("int8", weights, SIZES).bases.view(-1).tolist()
    kernel = fused.GatherInteraction(weights, SIZES, "int8", bases=bases, amx=amx)
    assert kernel.dots == expected_dots("int8", "auto", amx)
    expected_float = torch_path("int8", weights, x, ids)
    scale, zero_point = float(expected_float.abs().max()) / 120, 128
    expected = q8.QuantizeInput(scale, zero_point)(expected_float)
    out = torch.empty(512, WIDTH, dtype=torch.uint8)
    kernel(x, ids, out, quantize=(scale, zero_point))
    diff = (out.int() - expected.int()).abs()
    # float sums in another order can land a value on the other side of a rounding tie
    assert int(diff.max()) <= 1
    assert float((diff > 0).float().mean()) < 1e-3
    assert int(out.min()) == 0 or int(expected.min()) > 0  # the clamp is applied
    assert len(out.unique()) > 100, "a degenerate quantization would not test anything"


@needs_kernel
@pytest.mark.parametrize("bad_id", [-1, SIZES[4]])
def test_ids_outside_their_table_are_refused(bad_id: int) -> None:
    tables, x, ids = tables_and_batch(64)
    kernel = fused.GatherInteraction(tables, SIZES, "fp32")
    ids[4, 10] = bad_id
    with pytest.raises(IndexError, match="outside its table"):
        kernel(x, ids, torch.empty(64, WIDTH))


@needs_kernel
def test_wrong_output_buffer_is_refused() -> None:
    tables, x, ids = tables_and_batch(8)
    kernel = fused.GatherInteraction(tables, SIZES, "fp32")
    with pytest.raises(ValueError, match="uint8 output needs quantize"):
        kernel(x, ids, torch.empty(8, WIDTH, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out must be uint8 when quantize"):
        kernel(x, ids, torch.empty(8, WIDTH), quantize=(0.1, 3))
    with pytest.raises(ValueError, match="out must be"):
        kernel(x, ids, torch.empty(8, WIDTH + 1))
    with pytest.raises(ValueError, match="out must be"):
        kernel(x, ids, torch.empty(8, WIDTH, dtype=torch.float16))


@needs_kernel
def test_build_is_cached_by_content(tmp_path) -> None:
    first, built = fused.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert built and fused.build(tmp_path) == (first, False)
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "build leftovers"


def test_unavailable_kernel_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    assert "DLRM_BENCH_FUSED=0" in (fused.unavailable_reason() or "")
    fused.load.cache_clear()
    monkeypatch.delenv(fused.ENV_SWITCH)
    monkeypatch.setenv("CC", "no-such-compiler-dlrm")
    reason = fused.unavailable_reason()
    if HAS_KERNEL_CPU:
        assert reason is not None and "no C compiler" in reason


@pytest.mark.parametrize("precision", ["avx_fp32", "avx_int8"])
def test_backend_records_the_kernel_and_agrees_without_it(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not {"avx512f", "avx512_vnni"} <= cpu_flags():
        pytest.skip(f"host cannot run {precision}")
    spec = get_preset("tiny")
    model = build_model(spec, seed=0).eval()
    batch = make_batch(spec, 1100, seed=7)  # > the 1024-row chunk
    dense, offsets, ids = batch.dense, batch.offsets, batch.indices
    calibration = [make_batch(spec, 512, seed=8)]
    with_kernel = native.prepare(model, precision, calibration=calibration)
    if HAS_KERNEL_CPU:
        assert with_kernel.gather is not None, with_kernel.kernels
        assert with_kernel.kernels["interaction"].startswith("fused C kernel")
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    fused.load.cache_clear()
    without = native.prepare(model, precision, calibration=calibration)
    assert without.gather is None
    assert "unavailable: turned off by DLRM_BENCH_FUSED=0" in without.kernels["interaction"]
    a, b = with_kernel(dense, offsets, ids), without(dense, offsets, ids)
    tolerance = 1e-5 if precision == "avx_fp32" else 2e-2  # int8: 1-LSB rounding ties
    assert float((a - b).abs().max()) <= tolerance


needs_vnni = pytest.mark.skipif(not (HAS_KERNEL_CPU and "avx512_vnni" in cpu_flags()),
                                reason="CPU lacks AVX512-VNNI")


@needs_vnni
@pytest.mark.parametrize(("k", "n"), [(13, 512), (479, 1024), (256, 1), (1024, 40)])
@pytest.mark.parametrize("rows", [1, 3, 4, 9])
@pytest.mark.parametrize("threads", [1, 2])
def test_small_int8_linear_equals_onednn(k: int, n: int, rows: int, threads: int) -> None:
    """K not a multiple of 4, N not of 16 nor of 32, rows around the 4-row tiles, 1-2 threads."""
    g = torch.Generator().manual_seed(k * n + rows)
    weight_q, w_scales = q8.quantize_weight(torch.randn(n, k, generator=g) * 0.05)
    bias = torch.randn(n, generator=g) * 0.1
    x = torch.randint(0, 256, (rows, k), dtype=torch.uint8, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for out_q, relu in [((0.03, 7), True), (None, False)]:
            onednn = q8.QLinear(weight_q, w_scales, bias, (0.04, 100), out_q, torch.float32,
                                relu=relu, batch_hint=1024)
            kernel = fused.SmallQMLP([onednn])
            expected, got = onednn(x), kernel(x)
            assert got.dtype == expected.dtype and got.shape == (rows, n)
            if out_q is None:
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            else:
                assert int((got.int() - expected.int()).abs().max()) <= 1
                if got.numel() >= 40:
                    assert len(got.unique()) > 2, "degenerate requantization tests nothing"
    finally:
        torch.set_num_threads(before)


@needs_vnni
def test_small_int8_chain_equals_layer_by_layer() -> None:
    """float input quantized in the kernel, three layers through scratch rows, sigmoid head."""
    g = torch.Generator().manual_seed(5)
    shapes = [(13, 64), (64, 48), (48, 1)]
    qparams = [(0.05, 3), (0.02, 0), (0.03, 0)]
    layers = []
    for i, (k, n) in enumerate(shapes):
        weight_q, w_scales = q8.quantize_weight(torch.randn(n, k, generator=g) * 0.2)
        last = i == len(shapes) - 1
        layers.append(q8.QLinear(weight_q, w_scales, torch.randn(n, generator=g) * 0.1,
                                 qparams[i], None if last else qparams[i + 1], torch.float32,
                                 relu=not last, batch_hint=1024))
    dense = torch.rand(6, 13, generator=g) * 8
    z = q8.QuantizeInput(*qparams[0])(dense)
    for layer in layers:
        z = layer(z)
    expected = torch.sigmoid(z)
    got = fused.SmallQMLP(layers, float_input=True, sigmoid=True)(dense)
    assert got.shape == (6, 1) and float(expected.std()) > 0.01
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2)  # 1-LSB rounding ties


@needs_kernel
@pytest.mark.parametrize(("k", "n"), [(13, 512), (479, 1024), (256, 1), (1024, 40), (7, 80)])
@pytest.mark.parametrize("rows", [1, 3, 4, 9, 21])
@pytest.mark.parametrize("threads", [1, 2])
def test_small_float_linear_equals_f_linear(k: int, n: int, rows: int, threads: int) -> None:
    """N not a multiple of 16 nor of 64 (a last group of 1-3 blocks; from 8 rows of 1 block),
    rows around the 4-row and 8-row tiles, odd K (the 1-row tile's two chains), 1-2 threads,
    each post-op."""
    g = torch.Generator().manual_seed(k * n + rows)
    weight = torch.randn(n, k, generator=g) / k**0.5
    bias = torch.randn(n, generator=g) * 0.1
    x = torch.randn(rows, k, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for post in ("relu", "none", "sigmoid"):
            layer = DenseLinear(weight, bias, post, packed=False, batch_hint=1024)
            expected, got = layer(x), fused.SmallFMLP([layer])(x)
            assert got.shape == (rows, n)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            if post == "relu" and got.numel() >= 40:
                assert 0 < int((got == 0).sum()) < got.numel(), "ReLU clipped all or nothing"
    finally:
        torch.set_num_threads(before)


@needs_kernel
def test_small_float_chain_equals_layer_by_layer_and_checks_its_input() -> None:
    g = torch.Generator().manual_seed(6)
    shapes = [(13, 64), (64, 48), (48, 1)]
    layers = [DenseLinear(torch.randn(n, k, generator=g) / k**0.5, torch.randn(n, generator=g),
                          "sigmoid" if i == len(shapes) - 1 else "relu", packed=False,
                          batch_hint=1024) for i, (k, n) in enumerate(shapes)]
    x = torch.randn(6, 13, generator=g)
    expected = x
    for layer in layers:
        expected = layer(expected)
    chain = fused.SmallFMLP(layers)
    got = chain(x)
    assert got.shape == (6, 1) and float(expected.std()) > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for bad in (x.double(), x[:, :12], x.t().contiguous().t()):
        with pytest.raises(ValueError, match="row-contiguous float32"):
            chain(bad)


needs_bf16 = pytest.mark.skipif(not HAS_KERNEL_CPU or "avx512_bf16" not in cpu_flags(),
                                reason="CPU lacks AVX-512 BW/VL/DQ or AVX512-BF16")


@needs_bf16
@pytest.mark.parametrize(("k", "n"), [(13, 512), (479, 1024), (256, 1), (1024, 40), (7, 80)])
@pytest.mark.parametrize("rows", [1, 3, 4, 9])
@pytest.mark.parametrize("threads", [1, 2])
def test_small_bf16_linear_equals_float_math_on_bf16_values(
    k: int, n: int, rows: int, threads: int
) -> None:
    """bf16 inputs and weights, float32 sums: "float32" output equals F.linear in float32 on the
    same (bf16) values, "bf16-as-float32" is that rounded to bf16. Odd K (the last input alone),
    N not a multiple of 16 nor 64, rows around the 4-row tiles, 1-2 threads, each post-op; the
    float_input form rounds float32 rows to bf16 first."""
    g = torch.Generator().manual_seed(k * n + rows)
    weight = (torch.randn(n, k, generator=g) / k**0.5).bfloat16()
    bias = (torch.randn(n, generator=g) * 0.1).bfloat16()
    x32 = torch.randn(rows, k, generator=g)
    x = x32.bfloat16()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for post in ("relu", "none", "sigmoid"):
            layer = DenseLinear(weight, bias, post, packed=False, batch_hint=1024)
            exact = F.linear(x.float(), weight.float(), bias.float())
            exact = {"relu": torch.relu, "sigmoid": torch.sigmoid, "none": lambda t: t}[post](exact)
            got = fused.SmallBMLP([layer], out="float32")(x)
            assert got.shape == (rows, n)
            torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)
            rounded = fused.SmallBMLP([layer], out="bf16-as-float32", float_input=True)(x32)
            assert torch.equal(rounded, rounded.bfloat16().float()), "not bf16 values"
            torch.testing.assert_close(rounded, exact.bfloat16().float(), rtol=2**-7, atol=1e-4)
            if post == "relu" and got.numel() >= 40:
                assert 0 < int((got == 0).sum()) < got.numel(), "ReLU clipped all or nothing"
    finally:
        torch.set_num_threads(before)


@needs_bf16
def test_small_bf16_chain_equals_the_bf16_layers_and_checks_its_input() -> None:
    """A chain as amx_bfloat16's top MLP: bf16 layers (outputs rounded to bf16 between them, as
    oneDNN's bf16 linears) ending in a float32 sigmoid head on widened activations."""
    g = torch.Generator().manual_seed(6)
    shapes = [(13, 64), (64, 48), (48, 1)]
    layers = [DenseLinear((torch.randn(n, k, generator=g) / k**0.5).bfloat16(),
                          torch.randn(n, generator=g).bfloat16(), "relu", packed=False,
                          batch_hint=1024) for k, n in shapes[:-1]]
    k, n = shapes[-1]
    layers.append(DenseLinear((torch.randn(n, k, generator=g) / k**0.5).bfloat16().float(),
                              torch.randn(n, generator=g).bfloat16().float(), "sigmoid",
                              packed=False, batch_hint=1024))
    x = torch.randn(6, 13, generator=g).bfloat16()
    expected = x
    for layer in layers:
        expected = layer(expected)
    chain = fused.SmallBMLP(layers, out="float32")
    got = chain(x)
    assert got.shape == (6, 1) and float(expected.std()) > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    for bad in (x.float(), x[:, :12], x.t().contiguous().t()):
        with pytest.raises(ValueError, match="row-contiguous"):
            chain(bad)
    with pytest.raises(fused.KernelUnavailable, match="bf16 weights"):
        fused.SmallBMLP([DenseLinear(torch.randn(4, 13, generator=g), torch.zeros(4), "none",
                                     packed=False, batch_hint=1024)])


@needs_kernel
@pytest.mark.parametrize("precision", ["avx_int8", "avx_fp32"])
def test_model_uses_the_small_kernels_for_small_batches_and_fp32_chunks(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8: only batches up to the limit go to the one-call kernel (bigger ones to oneDNN);
    fp32: bigger ones too, in chunks of the limit, with the general path's results."""
    small, plain, _batch = small_and_plain(precision, monkeypatch)
    limit = native.SMALL_INT8_ROWS_PER_THREAD if precision == "avx_int8" else (
        native.SMALL_FLOAT_ROWS_PER_THREAD)
    batch = make_batch(get_preset("tiny"), 2 * limit + 8, seed=11)
    dense, offsets, ids = batch.dense, batch.offsets, batch.indices
    isa = "VNNI int8" if precision == "avx_int8" else "AVX-512 fp32"
    assert small.kernels["small_batches"] == (
        f"one C call ({isa} MLPs) up to {limit} rows per thread")
    calls: list[int] = []
    real = small.small_forward
    small.small_forward = lambda d, o, i: (calls.append(d.shape[0]), real(d, o, i))[1]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the limit is per thread
    try:
        few = small(dense[:5], offsets[:, :5], ids[:, :5])
        many = small(dense, offsets, ids)
        expected = plain(dense, offsets, ids)
    finally:
        torch.set_num_threads(before)
    tolerance = 2e-2 if precision == "avx_int8" else 1e-5  # int8: 1-LSB rounding ties
    if precision == "avx_int8":
        assert calls == [5], f"{2 * limit + 8} rows must go to oneDNN, 5 to the one-call kernel"
        assert "big_batches" not in small.kernels
    else:
        assert calls == [5, limit, limit, 8], calls
        assert small.kernels["big_batches"] == (
            f"the same C call, in chunks of {limit} rows per thread")
    assert many.shape == (2 * limit + 8, 1)
    assert float((many - expected).abs().max()) <= tolerance
    assert float((few - expected[:5]).abs().max()) <= tolerance
    # bags of other than one id: the general path, whatever the size
    multi = offsets.clone()
    multi[1, 3] = 2
    calls.clear()
    got = small(dense, multi, ids)
    assert float((got - plain(dense, multi, ids)).abs().max()) <= tolerance
    assert calls == []  # the one-hot check comes first: no chunk was run


def small_and_plain(precision: str, monkeypatch: pytest.MonkeyPatch):
    """The tiny model prepared with the kernels and with them off, and a batch of 40 rows."""
    if precision == "avx_int8" and "avx512_vnni" not in cpu_flags():
        pytest.skip("CPU lacks AVX512-VNNI")
    spec = get_preset("tiny")
    model = build_model(spec, seed=0).eval()
    batch = make_batch(spec, 40, seed=21)
    with_kernels = native.prepare(model, precision, calibration=[batch])
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    fused.load.cache_clear()
    plain = native.prepare(model, precision, calibration=[batch])
    assert with_kernels.small_forward is not None and plain.small_forward is None
    return with_kernels, plain, batch


@needs_kernel
@pytest.mark.parametrize("precision", ["avx_int8", "avx_fp32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_call_forward_equals_the_general_path(
    precision: str, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows around the 4-row tiles, on 1 and 2 threads (the gather shares out rows inside the
    MLPs' parallel region); views of a bigger batch (strided ids and offsets)."""
    small, plain, batch = small_and_plain(precision, monkeypatch)
    tolerance = 2e-2 if precision == "avx_int8" else 1e-5  # int8: 1-LSB rounding ties
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (1, 3, 4, 9, 40):
            args = (batch.dense[:rows], batch.offsets[:, :rows], batch.indices[:, :rows])
            got = small.small_forward(*args)
            assert got is not None and got.shape == (rows, 1)
            expected = plain(*args)
            assert float((got - expected).abs().max()) <= tolerance, rows
            assert float(expected.std() if rows > 1 else 1) > 0
    finally:
        torch.set_num_threads(before)


@needs_kernel
@pytest.mark.parametrize("precision", ["avx_int8", "avx_fp32"])
def test_one_call_forward_across_many_batch_sizes_in_and_out_of_inference_mode(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More batch sizes than the per-size scratch keeps (it starts afresh), and back: every
    result is the general path's. A caller outside inference mode gets the same numbers and a
    tensor without autograd history, as from inside it."""
    small, plain, batch = small_and_plain(precision, monkeypatch)
    tolerance = 2e-2 if precision == "avx_int8" else 1e-5
    for rows in (*range(1, 13), 2, 40, 1):
        args = (batch.dense[:rows], batch.offsets[:, :rows], batch.indices[:, :rows])
        outside = small(*args)
        with torch.inference_mode():
            inside = small(*args)
        assert outside.is_inference() and not outside.requires_grad
        assert torch.equal(outside, inside), rows
        assert float((outside - plain(*args)).abs().max()) <= tolerance, rows
    assert len(small.small_forward.scratch) <= 8


@needs_kernel
@pytest.mark.parametrize("precision", ["avx_int8", "avx_fp32"])
def test_one_call_forward_leaves_multi_id_bags_to_the_general_path(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    small, plain, batch = small_and_plain(precision, monkeypatch)
    rows, tables = 6, batch.offsets.shape[0]
    # table 1: bag 2 empty, bag 3 sums ids 2 and 3 (EmbeddingBag offsets)
    offsets = torch.arange(rows).expand(tables, rows).contiguous()
    offsets[1, 3] = 2
    ids = batch.indices[:, :rows].contiguous()
    dense = batch.dense[:rows]
    assert small.small_forward(dense, offsets, ids) is None
    got, expected = small(dense, offsets, ids), plain(dense, offsets, ids)
    tolerance = 2e-2 if precision == "avx_int8" else 1e-5
    assert float((got - expected).abs().max()) <= tolerance


@needs_kernel
@pytest.mark.parametrize("precision", ["avx_int8", "avx_fp32"])
def test_one_call_forward_refuses_ids_outside_their_table(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    small, _plain, batch = small_and_plain(precision, monkeypatch)
    ids = batch.indices[:, :3].clone()
    ids[2, 1] = small.spec.table_sizes[2]
    with pytest.raises(IndexError, match="outside its table"):
        small(batch.dense[:3], batch.offsets[:, :3], ids)


@needs_kernel
def test_one_hot_check_matches_the_torch_one() -> None:
    tables, _x, ids = tables_and_batch(40)
    kernel = fused.GatherInteraction(tables, SIZES, "fp32")
    reference = EmbeddingTables("fp32", tables, SIZES)
    offsets = torch.arange(40).expand(T, 40)  # stride 0 over tables, as the data makes them
    cases = [offsets, offsets.contiguous(), offsets[:, :20]]
    multi = offsets.contiguous().clone()
    multi[7, 3] = 2  # bag 2 of table 7 holds two ids
    cases.append(multi)
    for case in cases:
        ids_case = ids[:, : case.shape[1]]
        assert kernel.one_hot(case, ids_case) == reference.one_hot(case, ids_case)
    assert kernel.one_hot(offsets, ids) and not kernel.one_hot(multi, ids)
    assert not kernel.one_hot(offsets.int(), ids)


def test_kernels_command_builds_and_says_why_not(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, fused.ENV_CACHE: str(tmp_path / "cache")}
    env.pop(fused.ENV_SWITCH, None)
    cmd = [sys.executable, "-m", "dlrm_bench", "kernels", "--json"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    state = json.loads(first.stdout)
    if HAS_KERNEL_CPU:
        assert state["available"] and state["built_now"], state
        again = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True,
                                          timeout=300).stdout)
        assert again["available"] and not again["built_now"] and again["path"] == state["path"]
        # loaded once (stamped): the check does not import torch again; without the stamp it
        # loads the build once more and stamps it
        probe = [sys.executable, "-c", "import sys; from dlrm_bench.backends import "
                 "kernel_build as k; print(k.status()['available'], 'torch' in sys.modules)"]
        stamp = fused.loaded_stamp(Path(state["path"]))
        assert stamp.is_file()
        assert subprocess.run(probe, env=env, capture_output=True, text=True,
                              timeout=300).stdout.split() == ["True", "False"]
        stamp.unlink()
        assert subprocess.run(probe, env=env, capture_output=True, text=True,
                              timeout=300).stdout.split() == ["True", "True"]
        assert stamp.is_file()
    off = subprocess.run([*cmd[:-1], "--require"], env={**env, fused.ENV_SWITCH: "0"},
                         capture_output=True, text=True, timeout=300)
    assert off.returncode == 2
    assert off.stderr.strip() == ("dlrm-bench: error: fused kernels cannot run here: turned off "
                                  "by DLRM_BENCH_FUSED=0")
    assert "unavailable: turned off by DLRM_BENCH_FUSED=0" in off.stdout


@needs_kernel
@pytest.mark.parametrize(("dots", "amx"), [("auto", False), ("float32", False), ("auto", True)])
def test_bf16_tables_and_output_match_the_bf16_torch_path(dots: str, amx: bool) -> None:
    """bf16 rows: vdpbf16ps on the stored rows (the default on AVX512-BF16), their Gram matrix
    on AMX tiles (``amx``) or rows widened to float32; always float32 sums of bf16 products."""
    tables, x, ids = tables_and_batch(200, seed=9)
    stacked = fuse_tables(tables, "bf16")
    bases = EmbeddingTables("bf16", [stacked], SIZES).bases.view(-1).tolist()
    kernel = fused.GatherInteraction([stacked], SIZES, "bf16", bases=bases, dots=dots, amx=amx)
    assert kernel.dots == expected_dots("bf16", dots, amx)
    xb = x.bfloat16()
    expected = torch_path("bf16", [stacked], xb, ids).float()
    out = torch.empty(200, WIDTH, dtype=torch.bfloat16)
    kernel(xb, ids, out)
    assert torch.equal(out[:, :D], xb), "the dense features pass through exactly"
    # the kernel sums in fp32 and rounds once; torch's bf16 bmm may round differently: 1 ulp
    torch.testing.assert_close(out.float(), expected, rtol=2 ** -7, atol=1e-2)
    exact = torch.empty(200, WIDTH)
    kernel(xb, ids, exact)  # fp32 output of the same bf16 rows: the bf16 one is its rounding
    assert torch.equal(out, exact.bfloat16())


@needs_kernel
def test_fp32_rows_in_bf16_math_give_the_gram_of_their_bf16_values() -> None:
    """amx_bfloat32 (fp32 tables, matmuls in bf16): the kernel rounds the float32 rows and x to
    bf16 in L1 and takes their Gram matrix on AMX tiles: the same bits as the bf16-table kernel
    on the tables rounded to bf16 (nearest even), near the float32 dots, and only where the
    precision says its matmuls may run in bf16."""
    tables, x, ids = tables_and_batch(300, seed=11)
    stacked = fuse_tables(tables, "fp32")
    bases = EmbeddingTables("fp32", [stacked], SIZES).bases.view(-1).tolist()
    plain = fused.GatherInteraction([stacked], SIZES, "fp32", bases=bases, amx=True)
    assert plain.dots == "float32"  # without bf16_math: fp32 stays fp32
    kernel = fused.GatherInteraction([stacked], SIZES, "fp32", bases=bases, amx=True,
                                     bf16_math=True)
    if not ({"avx512_bf16", "amx_bf16"} <= cpu_flags() and fused.amx_bf16_ready()):
        assert kernel.dots == "float32"
        pytest.skip("needs AVX512-BF16 and AMX-BF16 tiles")
    assert kernel.dots == "rounded"
    rounded = fused.GatherInteraction([stacked.bfloat16()], SIZES, "bf16", bases=bases, amx=True)
    assert rounded.dots == "amx"
    got, want, fp32 = (torch.empty(300, WIDTH) for _ in range(3))
    kernel(x, ids, got)
    rounded(x.bfloat16().float(), ids, want)
    assert torch.equal(got[:, D:], want[:, D:]) and torch.equal(got[:, :D], x)
    plain(x, ids, fp32)
    assert not torch.equal(got, fp32)  # the bf16 rounding is there
    torch.testing.assert_close(got, fp32, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("threads", [1, 2])
def test_amx_bfloat32_on_bf16_tables_gives_the_bits_of_its_fp32_tables(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """amx_bfloat32 prepares its tables in bf16 where the AMX bf16 tiles run (its matmuls round
    every row they read to bf16): the model's fp32 weights are untouched and a one-hot batch
    gives exactly the bits of the same plan on the fp32 tables (a prepared file made before),
    one row, a few, the tile chains' sizes and the chunks of a big batch; multi-hot bags stay
    close. Without usable tiles or with the C kernels off the tables stay fp32."""
    if not (HAS_KERNEL_CPU and fused.amx_bf16_ready()):
        pytest.skip("needs AMX bf16 tiles")
    spec = get_preset("tiny")
    model = build_model(spec, seed=0).eval()
    weights_before = [bag.weight.detach().clone() for bag in model.emb_l]
    prepared = native.prepare(model, "amx_bfloat32")
    assert [t.dtype for t in prepared.table_tensors()] == [torch.bfloat16]
    assert prepared.kernels["tables"].startswith("bf16")
    assert all(torch.equal(a, bag.weight) and bag.weight.dtype == torch.float32
               for a, bag in zip(weights_before, model.emb_l, strict=True))
    plan = native.PLANS["amx_bfloat32"]
    with torch.inference_mode():
        old = native.PreparedModel("amx_bfloat32", spec,
                                   native._float_state(model, plan["dtype"], "fp32"))
    assert old.kernels["tables"].startswith("fp32") and old.gather is not None
    assert old.gather.dots == "rounded" and prepared.gather is not None
    batch = make_batch(spec, 2500, seed=5)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (1, 3, 16, 100, 2500):
            args = (batch.dense[:rows], batch.offsets[:, :rows], batch.indices[:, :rows])
            assert torch.equal(prepared(*args), old(*args)), rows
        # two ids in every bag: the bf16 rows summed, against the fp32 rows' sum rounded
        ids = torch.stack([batch.indices[:, :64], batch.indices[:, 64:128]], 2).reshape(T, -1)
        offsets = (torch.arange(64) * 2).expand(T, -1)
        args = (batch.dense[:64], offsets, ids)
        torch.testing.assert_close(prepared(*args), old(*args), rtol=0, atol=2e-3)
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    fused.load.cache_clear()
    off = native.prepare(model, "amx_bfloat32")
    assert [t.dtype for t in off.table_tensors()] == [torch.float32] * T
    assert off.gather is None and off.kernels["tables"].startswith("fp32")


@pytest.mark.parametrize("precision", ["amx_bfloat16", "amx_bfloat32", "amx_int8"])
def test_amx_plans_use_the_kernels_and_agree_with_their_torch_path(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The amx plans use the fused kernels by default (built directly: this host may lack AMX,
    and the kernels use AMX only for the interaction's Gram matrix, where the CPU has it);
    DLRM_BENCH_FUSED=0 gives their torch path (the AMX bmm) back, and the two agree. amx_int8
    (VNNI), amx_bfloat16 (AVX512-BF16) and amx_bfloat32 (AVX-512 fp32) also take small batches
    in one call, up to their own (lower) limits; bigger ones go to oneDNN (on AMX tiles: in
    chunks of that call)."""
    if not HAS_KERNEL_CPU or not {"avx512_bf16", "avx512_vnni"} <= cpu_flags():
        pytest.skip("needs AVX-512 BW/VL/DQ, BF16 and VNNI for these plans' oneDNN GEMMs")
    spec = get_preset("tiny")
    model = build_model(spec, seed=0).eval()
    n = 80
    batch = make_batch(spec, n, seed=3)
    dense, offsets, ids = batch.dense, batch.offsets, batch.indices
    with torch.inference_mode():
        if precision == "amx_int8":
            state = native._int8_state(model, q8.calibrate(model, [batch]))
        else:
            plan = native.PLANS[precision]
            state = native._float_state(model, plan["dtype"], plan["tables"])
        monkeypatch.setenv(fused.ENV_SWITCH, "0")
        fused.load.cache_clear()
        plain = native.PreparedModel(precision, spec, state)
        monkeypatch.delenv(fused.ENV_SWITCH)
        fused.load.cache_clear()
        with_kernels = native.PreparedModel(precision, spec, state)
    assert plain.gather is None and with_kernels.gather is not None, with_kernels.kernels
    assert with_kernels.kernels["interaction"].startswith("fused C kernel")
    limits = {"amx_int8": (native.SMALL_AMX_INT8_ROWS_PER_THREAD, "VNNI int8"),
              "amx_bfloat16": (native.SMALL_AMX_BF16_ROWS_PER_THREAD, "AVX512-BF16 bf16"),
              "amx_bfloat32": (native.SMALL_AMX_BF32_ROWS_PER_THREAD, "AVX-512 fp32")}
    tiles = fused.amx_int8_ready() if precision == "amx_int8" else fused.amx_bf16_ready()
    if tiles:  # the chains on AMX tiles (amx_bfloat32's with its weights rounded to bf16)
        limits[precision] = (native.SMALL_AMX_TILES_ROWS_PER_THREAD,
                             "AMX int8" if precision == "amx_int8" else "AMX bf16")
    calls: list[int] = []
    if precision in limits:
        limit, isa = limits[precision]
        assert with_kernels.kernels["small_batches"] == (
            f"one C call ({isa} MLPs) up to {limit} rows per thread")
        # on tiles bigger batches run in chunks of that call too
        assert with_kernels.small_chunks == tiles
        assert with_kernels.small_forward is not None
        real = with_kernels.small_forward

        def counting(d: torch.Tensor, o: torch.Tensor, i: torch.Tensor) -> torch.Tensor | None:
            calls.append(d.shape[0])
            return real(d, o, i)

        with_kernels.small_forward = counting  # type: ignore[assignment]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the limits are per thread: 80 rows are above most, 1 below
    try:
        for rows in (n, 1, 3, 16):
            a = with_kernels(dense[:rows], offsets[:, :rows], ids[:, :rows])
            b = plain(dense[:rows], offsets[:, :rows], ids[:, :rows])
            assert float((a - b).abs().max()) <= 2e-2
    finally:
        torch.set_num_threads(before)
    if precision in limits:
        assert calls == [rows for rows in (n, 1, 3, 16) if rows <= limits[precision][0]]


def tiny_amx_model(precision: str, seed: int):
    """The tiny preset's model, a 300-row batch and the model prepared for an amx_* precision;
    skips where this CPU lacks that precision's AMX tiles."""
    ready = fused.amx_int8_ready if precision == "amx_int8" else fused.amx_bf16_ready
    if not (HAS_KERNEL_CPU and ready()):
        pytest.skip(f"needs AMX tiles for {precision}")
    spec = get_preset("tiny")
    model = build_model(spec, seed=0).eval()
    batch = make_batch(spec, 300, seed=seed)
    plan = native.PLANS[precision]
    with torch.inference_mode():
        if precision == "amx_int8":
            state = native._int8_state(model, q8.calibrate(model, [batch]))
        else:
            state = native._float_state(model, plan["dtype"], plan["tables"])
        return model, batch, native.PreparedModel(precision, spec, state)


@pytest.mark.parametrize("precision", ["amx_bfloat16", "amx_bfloat32", "amx_int8"])
@pytest.mark.parametrize("threads", [1, 2])
def test_chains_on_amx_tiles_equal_the_avx512_chains(precision: str, threads: int) -> None:
    """The one-call chains on AMX tiles (16-row blocks, 32- or 64-wide k chunks read past the
    rows and k's in use; from 8 rows, fewer take the AVX-512 chains) give the AVX-512 chains'
    results for row counts inside and across blocks: bf16 to float32 rounding, int8 exactly;
    amx_bfloat32 runs the bf16 ones with its weights rounded to bf16 and stays near fp32."""
    model, batch, prepared = tiny_amx_model(precision, seed=4)
    with torch.inference_mode():
        small = prepared.small_forward
        assert small is not None and small.amx and small.model.amx == 1
        reference = model(batch.dense, batch.offsets, batch.indices)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            # int8 from 64 rows per thread: the chains' rows split between the threads in
            # 32-row blocks (the last one partly used)
            for rows in (1, 3, 16, 17, 40, 150, 300):
                args = (batch.dense[:rows], batch.offsets[:, :rows], batch.indices[:, :rows])
                small.model.amx = 1
                tiles = small(*args)
                small.model.amx = 0
                avx512 = small(*args)
                small.model.amx = 1
                assert tiles is not None and not tiles.isnan().any()
                atol = 1e-6 if precision == "amx_int8" else 1e-3  # int8: same integer sums
                torch.testing.assert_close(tiles, avx512, rtol=0, atol=atol)
                assert float((tiles - reference[:rows]).abs().max()) < 2e-2
        finally:
            torch.set_num_threads(before)


@pytest.mark.parametrize("precision", ["amx_bfloat16", "amx_int8"])
def test_layer_groups_on_amx_tiles_give_the_layer_by_layer_results(precision: str) -> None:
    """The AMX chains' layer groups (consecutive layers whose weights fit a budget run 64 rows at
    a time through small buffers; a layer alone runs on all the thread's rows) change only the
    order of the work: every budget, from each layer alone to the whole chain in one group and
    the mixes between, gives the same bits, for row counts whose last group block is partial."""
    _, batch, prepared = tiny_amx_model(precision, seed=5)
    with torch.inference_mode():
        small = prepared.small_forward
        assert small is not None and small.amx
        # each layer's packed weights, as interaction.c's groups count them
        sizes = sorted((st.n + 15) // 16 * (st.kw if isinstance(c, fused.SmallQMLP) else st.kp)
                       * 64 for c in small.parts[1:] for st in c.structs)
        budgets = [0, sizes[0], sizes[0] + sizes[1], sum(sizes) // 2, 1 << 40]
        before = torch.get_num_threads(), fused.set_group_bytes(0)
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for rows in (64 * threads, 150, 300):
                    args = (batch.dense[:rows], batch.offsets[:, :rows], batch.indices[:, :rows])
                    fused.set_group_bytes(0)
                    alone = small(*args)
                    assert alone is not None and float(alone.std()) > 0
                    for budget in budgets[1:]:
                        fused.set_group_bytes(budget)
                        assert torch.equal(small(*args), alone), (threads, rows, budget)
        finally:
            torch.set_num_threads(before[0])
            fused.set_group_bytes(before[1])


@needs_vnni
def test_amx_int8_top_on_padded_rows_and_head_in_c_equals_the_plain_top() -> None:
    """amx_int8's fused-kernel path writes the interaction into rows padded to 512 for a padded
    first top layer and runs the 256 -> 1 head + sigmoid in one C call: same probabilities as
    the plain oneDNN top MLP on 479-wide rows."""
    spec = get_preset("tiny")
    model = build_model(spec, seed=0).eval()
    batch = make_batch(spec, 300, seed=6)
    with torch.inference_mode():
        state = native._int8_state(model, q8.calibrate(model, [batch]))
        prepared = native.PreparedModel("amx_int8", spec, state)
        assert prepared.top_first_padded is not None and prepared.head is not None
        assert prepared.z_width == 512 and prepared.gather is not None
        prepared.small_rows_per_thread = 0  # the general path
        args = (batch.dense, batch.offsets, batch.indices)
        lean = prepared(*args).clone()
        prepared.top_first_padded = None
        plain = prepared(*args)
    assert lean.shape == (300, 1)
    torch.testing.assert_close(lean, plain, rtol=0, atol=1e-6)


def test_layer_on_tiles_equals_the_chains_and_checks_its_shapes() -> None:
    """fused.layer_on_tiles (harness_peaks' view of the one-call path's AMX GEMM): the int8
    chain's sums exactly, the bf16 chain's to float32 rounding, for an output count that is not
    a multiple of the 32-output tile pair; rows not in 32-row blocks are refused."""
    if not (HAS_KERNEL_CPU and fused.amx_int8_ready() and fused.amx_bf16_ready()):
        pytest.skip("needs AMX tiles")
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(9)
    k, n, rows = 128, 48, 96
    weight_q, w_scales = q8.quantize_weight(torch.randn(n, k, generator=g) * 0.05)
    layer = q8.QLinear(weight_q, w_scales, torch.randn(n, generator=g) * 0.1, (0.04, 100), None,
                       torch.float32, relu=True, batch_hint=1024)
    chain = fused.SmallQMLP([layer])
    x = torch.randint(0, 256, (rows, k), dtype=torch.uint8, generator=g)
    got = fused.layer_on_tiles(chain, x)
    assert got.shape == (rows, n) and float(got.std()) > 0
    torch.testing.assert_close(got, chain(x), rtol=0, atol=0)
    bf = SimpleNamespace(weight=(torch.randn(n, k, generator=g) * 0.05).bfloat16(),
                         bias=torch.randn(n, generator=g) * 0.1, post="none")
    bchain = fused.SmallBMLP([bf])
    xb = torch.randn(rows, k, generator=g).bfloat16()
    torch.testing.assert_close(fused.layer_on_tiles(bchain, xb), bchain(xb), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 32"):
        fused.layer_on_tiles(chain, x[:40].contiguous())


@pytest.mark.parametrize("n", [40, 48, 64])
def test_tile_epilogues_of_inner_layers_equal_the_chains(n: int) -> None:
    """The tile path's own epilogues (uint8 codes or float32 values of an int8 layer, bf16 values
    of a bf16 layer; the output blocks' constants held across rows): the int8 chain's outputs
    exactly, with and without a ReLU (whose least code is the zero point, not 0), and the bf16
    values as rounded from float32 sums, for output counts in whole 32-output tile pairs, with a
    lone 16-output block, and with a partly used block."""
    if not (HAS_KERNEL_CPU and fused.amx_int8_ready() and fused.amx_bf16_ready()):
        pytest.skip("needs AMX tiles")
    import ctypes
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(n)
    k, rows = 192, 96
    for relu in (True, False):
        weight_q, w_scales = q8.quantize_weight(torch.randn(n, k, generator=g) * 0.05)
        layer = q8.QLinear(weight_q, w_scales, torch.randn(n, generator=g) * 0.1, (0.04, 100),
                           (0.02, 37), None, relu=relu, batch_hint=1024)
        chain = fused.SmallQMLP([layer])
        assert chain.out_u8
        x = torch.randint(0, 256, (rows, k), dtype=torch.uint8, generator=g)
        got, want = fused.layer_on_tiles(chain, x), chain(x)
        assert got.dtype == torch.uint8 and len(want.unique()) > 20
        assert int(want.min()) == (37 if relu else 0) or not relu  # the ReLU's floor is used
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        # float32 output (the bottom MLP's last layer)
        layer = q8.QLinear(weight_q, w_scales, torch.randn(n, generator=g) * 0.1, (0.04, 100),
                           None, torch.float32, relu=relu, batch_hint=1024)
        chain = fused.SmallQMLP([layer])
        got, want = fused.layer_on_tiles(chain, x), chain(x)
        assert got.dtype == torch.float32 and (float(want.min()) < 0) == (not relu)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for post in ("relu", "none"):
        weight = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
        bias = torch.randn(n, generator=g) * 0.1
        bchain = fused.SmallBMLP([SimpleNamespace(weight=weight, bias=bias, post=post)])
        bchain.structs[0].out = fused.B_OUT["bf16"]  # as an inner layer stores its output
        xb = torch.randn(rows, k, generator=g).bfloat16()
        out = torch.full((rows, n), float("nan"), dtype=torch.bfloat16)
        code = bchain.lib.dlrm_layer_tiles(1, ctypes.cast(bchain.structs, ctypes.c_void_p), rows,
                                           xb.data_ptr(), xb.stride(0), out.data_ptr(),
                                           out.stride(0), torch.get_num_threads())
        assert code == 0
        sums = xb.float() @ weight.float().T + bias
        want = (sums.relu() if post == "relu" else sums).bfloat16()
        assert not out.isnan().any() and (float(out.min()) < 0) == (post == "none")
        # float32 sums in another order: at most one bf16 step apart
        torch.testing.assert_close(out.float(), want.float(), rtol=2 ** -7, atol=1e-6)


@needs_kernel
def test_int8_gram_with_dense_row_planes_keeps_float32_accuracy() -> None:
    """amx_int8's interaction puts the dense row into the Gram matrix as a 24-bit fixed-point
    row (three byte planes): rows that are constant (a zero step), far from zero, or spread
    wide still give the torch ops' float32 dots to float32-like accuracy (each sample's error
    within a few float32 steps of its largest output, as the float sums in another order)."""
    tables, x, ids = tables_and_batch(64, seed=11)
    weights = [fuse_tables(tables, "int8")]
    bases = EmbeddingTables("int8", weights, SIZES).bases.view(-1).tolist()
    kernel = fused.GatherInteraction(weights, SIZES, "int8", bases=bases, amx=True)
    if kernel.dots != "amx":
        pytest.skip("needs AMX tiles for the int8 Gram matrix")
    x = x.clone()
    x[:16] = 0.75  # constant rows
    x[16:32] = x[16:32] * 0.01 + 300.0  # far from zero: the fixed point's offset carries them
    x[32:48] = x[32:48] * 1000.0  # wide
    expected = torch_path("int8", weights, x, ids)
    out = torch.empty(64, WIDTH)
    kernel(x, ids, out)
    largest = expected.abs().amax(dim=1, keepdim=True)
    assert bool(((out - expected).abs() <= largest * 2e-6 + 1e-5).all())


@needs_kernel
@pytest.mark.parametrize("num_tables", [28, 29])
def test_int8_gram_needs_four_spare_tile_rows(num_tables: int) -> None:
    """The int8 Gram matrix holds the tables' rows plus a row of ones and x's three planes in 32
    tile rows: 28 tables take the tiles, 29 the VNNI dots, and both give the torch ops' dots."""
    if not (HAS_KERNEL_CPU and fused.amx_int8_ready()):
        pytest.skip("needs AMX tiles for the int8 Gram matrix")
    g = torch.Generator().manual_seed(num_tables)
    sizes = tuple(50 + 3 * t for t in range(num_tables))
    tables = [torch.rand(n, D, generator=g) - 0.5 for n in sizes]
    x = torch.randn(40, D, generator=g)
    ids = torch.stack([torch.randint(0, n, (40,), generator=g) for n in sizes])
    weights = [fuse_tables(tables, "int8")]
    bases = EmbeddingTables("int8", weights, sizes).bases.view(-1).tolist()
    kernel = fused.GatherInteraction(weights, sizes, "int8", bases=bases, amx=True)
    assert kernel.dots == ("amx" if num_tables <= 28 else "stored")
    out = torch.empty(40, D + num_tables * (num_tables + 1) // 2)
    kernel(x, ids, out)
    offsets = torch.arange(40).expand(num_tables, -1)
    stacked = EmbeddingTables("int8", weights, sizes).stacked(x, offsets, ids, True)
    torch.testing.assert_close(out, Interaction(num_tables)(stacked), rtol=1e-5, atol=1e-4)
