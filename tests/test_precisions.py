"""Native-backend precisions against the plain fp32 model, int8 calibration files, saved weights.

The test model is the ``tiny`` preset made non-degenerate (``_non_degenerate``): random init gives
probabilities all within 0.5 +- 0.01, where any precision looks right, so the tables are drawn
from U(-0.5, 0.5) (row norms ~3, like trained embeddings, so the interaction matters) and the
last linear is rescaled to logits of mean 0, std 1 (probabilities ~0.1 .. 0.9).

Tolerances on |p - p_fp32| over the probabilities of 2500 samples (max; mean):

- avx_fp32: 1e-5; 1e-6 (the same fp32 math up to GEMM blocking order)
- amx_bfloat32, amx_bfloat16: 2e-2; 5e-3 (bf16 keeps 8 mantissa bits; 8 layers deep)
- avx_int8, amx_int8: 5e-2; 1e-2 after calibrating on 4 batches of 512 (measured ~0.04 max,
  dominated by the per-tensor quantization of the interaction output, as with IPEX's recipe)
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from engine_helpers import make_batch

from dlrm_bench.backends import native
from dlrm_bench.backends import native_int8 as q8
from dlrm_bench.backends.native_ops import EmbeddingTables, fuse_tables
from dlrm_bench.cpu import FLAGS_ENV, PRECISIONS, REQUIRED_FLAGS, cpu_flags
from dlrm_bench.errors import UserError
from dlrm_bench.model import DLRM, build_model
from dlrm_bench.presets import ModelSpec, get_preset

pytestmark = pytest.mark.filterwarnings("ignore:the environment does not set:RuntimeWarning")

TOLERANCE = {"avx_fp32": 1e-5, "amx_bfloat32": 2e-2, "amx_bfloat16": 2e-2,
             "avx_int8": 5e-2, "amx_int8": 5e-2}
MEAN_TOLERANCE = {"avx_fp32": 1e-6, "amx_bfloat32": 5e-3, "amx_bfloat16": 5e-3,
                  "avx_int8": 1e-2, "amx_int8": 1e-2}
SPEC = get_preset("tiny")


def runnable(precision: str) -> bool:
    return set(REQUIRED_FLAGS[precision]) <= cpu_flags()


def needs(precision: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not runnable(precision), reason=f"host cannot run {precision}")


PARAMS = [pytest.param(p, marks=needs(p)) for p in PRECISIONS]


@torch.no_grad()
def _non_degenerate(model: DLRM, batch: SimpleNamespace) -> None:
    """Tables from U(-0.5, 0.5), last linear rescaled to logits of mean 0 and std 1 on ``batch``."""
    for bag in model.emb_l:
        bag.weight.uniform_(-0.5, 0.5)
    last = model.top_l[-2]
    captured: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, _a, out: captured.append(out))
    model(batch.dense, batch.offsets, batch.indices)
    hook.remove()
    logits = captured[0]
    k = 1.0 / float(logits.std())
    last.weight.mul_(k)
    last.bias.mul_(k).sub_(float(logits.mean()) * k)


@pytest.fixture(scope="module")
def model() -> DLRM:
    m = build_model(SPEC, seed=0).eval()
    _non_degenerate(m, make_batch(SPEC, 2048, seed=99))
    return m


@pytest.fixture(scope="module")
def calibration() -> list[SimpleNamespace]:
    return [make_batch(SPEC, 512, seed=10 + i) for i in range(4)]


@pytest.fixture(scope="module")
def test_batch() -> SimpleNamespace:
    return make_batch(SPEC, 2500, seed=1)  # > the 2048-row chunk: the chunked path runs


def reference(model: DLRM, batch: SimpleNamespace) -> torch.Tensor:
    with torch.no_grad():
        return model(batch.dense, batch.offsets, batch.indices)


def test_reference_is_not_degenerate(model: DLRM, test_batch: SimpleNamespace) -> None:
    ref = reference(model, test_batch)
    assert float(ref.std()) > 0.15
    assert float(ref.min()) < 0.1 and float(ref.max()) > 0.9


@pytest.mark.parametrize("precision", PARAMS)
def test_matches_fp32(precision: str, model: DLRM, calibration: list, test_batch) -> None:
    prepared = native.prepare(model, precision, calibration=calibration)
    out = prepared(test_batch.dense, test_batch.offsets, test_batch.indices)
    ref = reference(model, test_batch)
    assert out.shape == (2500, 1) and out.dtype == torch.float32
    err = (out - ref).abs()
    assert float(err.max()) <= TOLERANCE[precision], f"max abs diff {float(err.max())}"
    assert float(err.mean()) <= MEAN_TOLERANCE[precision], f"mean abs diff {float(err.mean())}"
    if precision != "avx_fp32":
        assert float(err.max()) > 0, "a reduced precision gave bit-identical results"
    # probabilities are fp32, not bf16-rounded (a 2^-8 grid above 0.5 would tie and bias AUC)
    assert bool((out != out.bfloat16().float()).any())
    # a batch of one (latency mode) agrees too
    one = prepared(test_batch.dense[:1], test_batch.offsets[:, :1], test_batch.indices[:, :1])
    assert float((one - ref[:1]).abs().max()) <= TOLERANCE[precision]
    if not precision.endswith("int8"):  # int8: sums of 3 rows leave the one-hot calibration range
        multi = _multi_hot(test_batch, 64)
        out_multi = prepared(multi.dense, multi.offsets, multi.indices)
        assert float((out_multi - reference(model, multi)).abs().max()) <= TOLERANCE[precision]


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_multi_hot_lookup(model: DLRM, test_batch: SimpleNamespace, kind: str) -> None:
    """Bags of 0..3 ids (not the data's one-hot) through the split and fused table layouts."""
    multi = _multi_hot(test_batch, 64)
    tables = [bag.weight.detach() for bag in model.emb_l]
    store = tables if kind == "fp32" else [fuse_tables(tables, kind)]
    got = EmbeddingTables(kind, store, SPEC.table_sizes).lookup(multi.offsets, multi.indices)
    with torch.no_grad():
        want = torch.stack(model.emb_l(multi.offsets, multi.indices), dim=1)
    assert got.shape == want.shape == (64, SPEC.num_tables, 128)
    # 3 rows of |v| <= 0.5: bf16 rounds each row (2^-9 relative) and the sum (2^-8 of <= 1.5);
    # int8 rows are off by half a step (1 / 255) each
    bound = {"fp32": 1e-6, "bf16": 1e-2, "int8": 6e-3}[kind]
    assert float((got.float() - want).abs().max()) <= bound
    assert float(want[3].abs().sum()) > 0 and float(want[0].abs().sum()) == 0  # 3 ids; empty bag


def _multi_hot(batch: SimpleNamespace, size: int) -> SimpleNamespace:
    lengths = torch.arange(size) % 4  # 0, 1, 2 or 3 ids per bag, same for every table
    offsets_1 = torch.cumsum(lengths, 0) - lengths
    n = int(lengths.sum())
    indices = batch.indices[:, :n] if batch.indices.shape[1] >= n else None
    assert indices is not None
    return SimpleNamespace(dense=batch.dense[:size],
                           offsets=offsets_1.expand(batch.offsets.shape[0], size).contiguous(),
                           indices=indices.contiguous())


@needs("amx_bfloat32")
def test_bf32_math_mode_is_scoped(model: DLRM, test_batch: SimpleNamespace) -> None:
    settings = torch.backends.mkldnn.matmul
    before = settings.fp32_precision
    prepared = native.prepare(model, "amx_bfloat32")
    prepared(test_batch.dense, test_batch.offsets, test_batch.indices)
    assert settings.fp32_precision == before


def test_table_dtypes(model: DLRM, calibration: list) -> None:
    fp32 = native.prepare(model, "avx_fp32")
    # fp32 tables are the model's own tensors: no copy of (possibly 100 GB of) tables
    assert fp32.table_tensors()[0].data_ptr() == model.emb_l[0].weight.data_ptr()
    if runnable("amx_bfloat16"):
        (bf16,) = native.prepare(model, "amx_bfloat16").table_tensors()
        assert bf16.dtype == torch.bfloat16 and bf16.shape == (SPEC.table_rows, 128)
    (int8,) = native.prepare(model, "avx_int8", calibration=calibration).table_tensors()
    assert int8.dtype == torch.uint8 and int8.shape == (SPEC.table_rows, 128 + 8)


def test_calibration_file_written_reused_refused(
    model: DLRM, calibration: list, test_batch: SimpleNamespace, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "calib" / "int8.json"
    first = native.prepare(model, "avx_int8", calibration=calibration, calibration_file=path)
    saved = json.loads(path.read_text())
    assert saved["format"] == q8.CALIBRATION_FORMAT and saved["version"] == 1
    assert saved["model"]["table_sizes"] == list(SPEC.table_sizes)
    assert saved["batches"] == 4 and saved["samples"] == 2048
    assert set(saved["layers"]) == {"bot_l.0", "bot_l.2", "bot_l.4", "top_l.0", "top_l.2",
                                    "top_l.4", "top_l.6", "top_l.8"}
    assert saved["layers"]["top_l.2"]["zero_point"] == 0  # a ReLU output: min 0

    def no_calibration(*_args: object) -> None:
        raise AssertionError("recalibrated although the calibration file exists")

    monkeypatch.setattr(q8, "calibrate", no_calibration)
    second = native.prepare(model, "avx_int8", calibration=None, calibration_file=path)
    args = (test_batch.dense, test_batch.offsets, test_batch.indices)
    assert torch.equal(first(*args), second(*args))

    other = build_model(ModelSpec(tuple(n + 1 for n in SPEC.table_sizes)), seed=0)
    with pytest.raises(UserError, match="another model architecture"):
        native.prepare(other, "avx_int8", calibration_file=path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read calibration file"):
        native.prepare(model, "avx_int8", calibration_file=path)


def test_int8_without_calibration_is_refused(model: DLRM, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="calibration batches or an existing calibration file"):
        native.prepare(model, "avx_int8", calibration_file=tmp_path / "absent.json")


def test_amx_refused_on_host_without_amx(model: DLRM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FLAGS_ENV, "avx512f avx512_vnni")
    with pytest.raises(UserError, match="amx_bfloat16 needs the CPU flags"):
        native.prepare(model, "amx_bfloat16")


def _mapped_files(tensor: torch.Tensor) -> list[str]:
    """Paths of the /proc/self/maps mappings holding ``tensor``'s first byte."""
    ptr, found = tensor.data_ptr(), []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= ptr < hi and len(fields) >= 6:
                found.append(fields[5])
    return found


@pytest.mark.parametrize("precision", PARAMS)
def test_save_load_round_trip(
    precision: str, model: DLRM, calibration: list, test_batch: SimpleNamespace, tmp_path: Path
) -> None:
    prepared = native.prepare(model, precision, calibration=calibration)
    path = tmp_path / "prepared.pt"
    native.save_prepared(prepared, path)
    assert [p.name for p in tmp_path.iterdir()] == ["prepared.pt"]  # no temporary left behind
    loaded = native.load_prepared(path, mmap=True)
    args = (test_batch.dense, test_batch.offsets, test_batch.indices)
    assert loaded.precision == precision and loaded.spec == SPEC
    assert torch.equal(prepared(*args), loaded(*args))
    assert loaded.calibration == prepared.calibration
    # every table is a view of the file mapping (page cache, shared between processes), not a copy
    for table in loaded.table_tensors():
        assert str(path) in _mapped_files(table)
    copied = native.load_prepared(path, mmap=False)
    assert str(path) not in _mapped_files(copied.table_tensors()[0])


def test_load_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"format": "something-else"}, path)
    with pytest.raises(UserError, match="not a dlrm-bench prepared-weights file"):
        native.load_prepared(path)
    with pytest.raises(UserError, match="cannot load prepared weights"):
        native.load_prepared(tmp_path / "missing.pt")
