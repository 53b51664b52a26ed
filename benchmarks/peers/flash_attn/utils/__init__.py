"""The part of ``flash_attn.utils`` OpenRLHF imports."""
