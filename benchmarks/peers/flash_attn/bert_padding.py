"""The names OpenRLHF imports from ``flash_attn.bert_padding``; only its packing path calls them."""

from einops import rearrange  # noqa: F401  (OpenRLHF imports it from here; it is einops' own)

from . import _packing_needs_flash_attn

index_first_axis = _packing_needs_flash_attn("bert_padding.index_first_axis")
pad_input = _packing_needs_flash_attn("bert_padding.pad_input")
unpad_input = _packing_needs_flash_attn("bert_padding.unpad_input")
