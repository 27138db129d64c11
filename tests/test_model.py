"""The DLRM architecture: reference Terabyte shapes, interaction order, multi-hot lookups."""

from __future__ import annotations

import pytest
import torch

from dlrm_bench.errors import UserError
from dlrm_bench.model import build_model
from dlrm_bench.presets import PRESETS, TERABYTE_TABLE_SIZES, get_preset


def test_presets_cap_the_mlperf_table_sizes() -> None:
    assert PRESETS["terabyte"].table_sizes == TERABYTE_TABLE_SIZES
    assert max(PRESETS["terabyte-small"].table_sizes) == 1_000_000
    assert max(PRESETS["tiny"].table_sizes) == 10_000
    assert PRESETS["tiny"].table_sizes[5] == 3  # small tables are not padded up
    # ~90 GB fp32 for the full model, ~3.6 GB for terabyte-small.
    assert 85e9 < PRESETS["terabyte"].table_bytes() < 100e9
    assert 3.0e9 < PRESETS["terabyte-small"].table_bytes() < 4.0e9


def test_unknown_preset_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_reference_layer_shapes_and_state_dict_keys() -> None:
    model = build_model(PRESETS["tiny"])
    sd = model.state_dict()
    assert [tuple(sd[f"bot_l.{i}.weight"].shape) for i in (0, 2, 4)] == [
        (512, 13), (256, 512), (128, 256)]
    assert [tuple(sd[f"top_l.{i}.weight"].shape) for i in (0, 2, 4, 6, 8)] == [
        (1024, 479), (1024, 1024), (512, 1024), (256, 512), (1, 256)]
    assert sorted(k for k in sd if k.startswith("emb_l")) == sorted(
        f"emb_l.{i}.weight" for i in range(26))
    assert all(sd[f"emb_l.{i}.weight"].shape[1] == 128 for i in range(26))
    assert PRESETS["tiny"].interaction_width == 479


def test_interaction_is_the_strict_lower_triangle_in_reference_order() -> None:
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]).eval()
    x = torch.randn(3, 128)
    ly = [torch.randn(3, 128) for _ in range(26)]
    out = model.interaction(x, ly)
    vectors = [x, *ly]
    expected = [x]
    # The reference loops i over rows, j < i over columns.
    pairs = [(vectors[i] * vectors[j]).sum(1, keepdim=True) for i in range(27) for j in range(i)]
    expected.append(torch.cat(pairs, dim=1))
    torch.testing.assert_close(out, torch.cat(expected, dim=1), rtol=1e-5, atol=1e-5)


def test_forward_probabilities_and_multi_hot() -> None:
    spec = PRESETS["tiny"]
    model = build_model(spec).eval()
    batch = 4
    dense = torch.rand(batch, 13)
    indices = torch.stack([torch.randint(0, n, (batch,)) for n in spec.table_sizes])
    offsets = torch.arange(batch).expand(26, batch)
    with torch.no_grad():
        out = model(dense, offsets, indices)
        assert out.shape == (batch, 1)
        assert bool(((out > 0) & (out < 1)).all())
        # Multi-hot: two ids per sample in every table == the sum of the two one-hot lookups.
        extra = torch.stack([torch.randint(0, n, (batch,)) for n in spec.table_sizes])
        multi_idx = [torch.stack([indices[k], extra[k]], 1).reshape(-1) for k in range(26)]
        multi_off = [torch.arange(0, 2 * batch, 2) for _ in range(26)]
        emb_multi = model.emb_l(multi_off, multi_idx)
        emb_a = model.emb_l(offsets, indices)
        emb_b = model.emb_l(offsets, extra)
        for k in range(26):
            torch.testing.assert_close(emb_multi[k], emb_a[k] + emb_b[k])
        assert model(dense, multi_off, multi_idx).shape == (batch, 1)


def test_flops_per_sample_matches_the_published_figure() -> None:
    spec = PRESETS["terabyte"]
    assert spec.mlp_macs_per_sample() == 170_496 + 2_194_688
    assert 4.7e6 < spec.flops_per_sample() < 4.9e6
