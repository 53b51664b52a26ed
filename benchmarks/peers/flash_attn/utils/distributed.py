"""``flash_attn.utils.distributed.all_gather``, imported by OpenRLHF's ring-attention helpers, never called here."""

from .. import _packing_needs_flash_attn

all_gather = _packing_needs_flash_attn("utils.distributed.all_gather")
