"""The step's kernel inputs: lengths as device tensors, cross-attention inputs packed flat."""

import torch

from vlmserve.kernels.step_inputs import CrossInputs, DeviceLens
from vlmserve.layers.attention_metadata import AttentionMetadata


def test_device_lens_holds_the_lists_and_the_decodes():
    lens = DeviceLens.build([5, 17, 1, 9], [0, 5, 6, 7, 8], torch.device("cpu"))
    assert lens.seq_lens.tolist() == [5, 17, 1, 9] and lens.query_start_loc.tolist() == [0, 5, 6, 7, 8]
    assert lens.decode_seqs.tolist() == [1, 2, 3] and lens.decode_rows.tolist() == [5, 6, 7]
    assert lens.num_decodes == 3


def test_metadata_holds_the_lengths_on_the_block_tables_device_only():
    metadata = AttentionMetadata.build([0, 1], [3], torch.zeros(1, 1, dtype=torch.int64), torch.tensor([2]))
    assert metadata.lens.seq_lens.tolist() == [3] and metadata.lens.query_start_loc.tolist() == [0, 1]
    assert metadata.lens.seq_lens.device == metadata.block_tables.device and metadata.num_seqs == 1
    assert not hasattr(metadata, "seq_lens") and not hasattr(metadata, "query_start_loc")


def test_cross_inputs_pack_each_layer_sequence_after_sequence():
    masks = [torch.tensor([[True, False, True]]), torch.tensor([[False, True], [True, True]])]
    kv_rows = [{1: (torch.tensor([10, 11, 12]), torch.tensor([20, 21, 22])), 4: (torch.tensor([0, 1, 2]),) * 2},
               {1: (torch.tensor([30, 31]), torch.tensor([40, 41])), 4: (torch.tensor([3, 4]),) * 2}]
    packed = CrossInputs.build([0, 1, 3], kv_rows, masks)
    assert sorted(packed) == [1, 4]
    layer = packed[1]
    assert layer.k_rows.tolist() == [10, 11, 12, 30, 31] and layer.v_rows.tolist() == [20, 21, 22, 40, 41]
    assert layer.kv_start_loc.tolist() == [0, 3, 5] and layer.query_start_loc.tolist() == [0, 1, 3]
    assert layer.mask_start_loc.tolist() == [0, 3, 7]
    assert layer.mask.tolist() == [True, False, True, False, True, True, True]
    assert packed[4].mask is layer.mask
