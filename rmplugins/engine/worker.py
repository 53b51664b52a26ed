"""The engine's worker: forwards of one backbone over the micro-batches the scheduler (:mod:`.engine`) planned,
returning the final hidden states at the positions each row reads.

Three kinds of forward: whole sequences; prefixes, keeping their keys/values; suffixes, attending to their
group's prefix cache. With the engine attention (:mod:`.attention`) there is no padding mask and a suffix attends
to its prefix's keys/values in place; otherwise the model's own attention runs with masks and each suffix row gets
its own copy of its prefix's cache (a plain ``DynamicCache``: any backbone that takes one).
"""

from __future__ import annotations

import gc
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .attention import AttentionPlan, use_engine_attention
from .cache_argument import cache_keyword, output_cache
from .ragged import RaggedLayout
from .read_positions import last_layer_row_modules, reading_only

KV = list[tuple[torch.Tensor, torch.Tensor]]  # keys and values [1, kv_heads, length, head_dim] per layer


class BackboneWorker:
    def __init__(self, backbone: torch.nn.Module, pad_token_id: int, causal: bool, stats):
        self.backbone = backbone
        self.pad_token_id = int(pad_token_id)
        self.causal = causal
        self.stats = stats
        self.read_modules = last_layer_row_modules(backbone) if causal else None
        self.attend_in_engine = False  # set per call by the engine
        self.fused = None  # FusedForwards (.fused) for this call's forwards, set per call by the engine
        self.round_shapes = False  # rows and read rows run rounded up to a grid (.shapes), set per call

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and their mask (counted in the engine's stats as one forward)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        self.stats.forwards += 1
        self.stats.tokens_processed += sum(len(s) for s in seqs)
        self.stats.tokens_padded += len(seqs) * width
        return ids, mask

    @staticmethod
    def gather(hidden: torch.Tensor, positions: list[list[int]]) -> list[torch.Tensor]:
        """Rows ``positions[r]`` of each ``hidden[r]`` with one index_select over the flattened batch."""
        batch, width, size = hidden.shape
        flat = [r * width + p for r, pos in enumerate(positions) for p in pos]
        picked = hidden.reshape(batch * width, size).index_select(
            0, torch.as_tensor(flat, dtype=torch.long, device=hidden.device))
        return list(picked.split([len(p) for p in positions]))

    def backbone_forward(self, ids: torch.Tensor, mask: torch.Tensor, read: list[list[int]], *,
                         prefix_kv: list | None = None, query_rows: list[torch.Tensor] | None = None, **kwargs):
        """One backbone forward of right-padded rows, of which only positions ``read[r]`` of each row ``r`` are
        used. With the engine attention there is no mask, and a suffix forward passes its groups' prefix caches
        (``prefix_kv``) and each group's flat positions (``query_rows``); otherwise the model's own attention runs
        with ``mask`` (a suffix forward then passes its cache in ``kwargs``)."""
        device = self.device
        with self._fused(), reading_only(self.read_modules, ids.shape[1], read, device) as rows:
            if not self.attend_in_engine:
                return self.backbone(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            plan = AttentionPlan(read_layer=None if rows is None else len(self.backbone.layers) - 1, read_rows=rows,
                                 prefix_kv=prefix_kv or [], query_rows=query_rows or [])
            with use_engine_attention(self.backbone):
                return self.backbone(input_ids=ids.to(device), rmplugins_plan=plan, **kwargs)

    def _fused(self):
        return self.fused.patch(self.attend_in_engine) if self.fused is not None else nullcontext()

    def forward_ragged(self, layout: RaggedLayout, reads: list[int], keep: list[tuple[int, int]],
                       kept: list[KV] | None = None, filler: int = 0) -> tuple[torch.Tensor, list[KV]]:
        """One forward of pieces laid end to end (engine attention only), given the caches of the kept prompts its
        pieces continue (``kept``): the final hidden states at the flat positions ``reads`` and, per
        ``(offset, length)`` in ``keep``, that piece's keys/values in every layer. The last ``filler`` tokens
        round the row's length (.shapes): padding, not processed."""
        self.stats.forwards += 1
        self.stats.tokens_processed += layout.tokens - filler
        self.stats.tokens_padded += layout.tokens
        layout = layout.to(self.device)
        plan = AttentionPlan(ragged=layout, keep=keep, prefix_kv=kept or [],
                             merge=self.fused.merge if self.fused is not None else None)
        with self._fused(), reading_only(self.read_modules, layout.tokens, [reads], self.device,
                                         round_rows=self.round_shapes) as rows, use_engine_attention(self.backbone):
            if rows is not None:  # the last layer attends only from the read positions
                plan.read_layer, plan.read_rows = len(self.backbone.layers) - 1, rows
            out = self.backbone(input_ids=layout.ids, position_ids=layout.position_ids, rmplugins_plan=plan,
                                use_cache=False)
        hidden = out.last_hidden_state[0].index_select(0, torch.as_tensor(reads, dtype=torch.long,
                                                                          device=self.device))
        return hidden, [[plan.kept[layer][j] for layer in range(len(plan.kept))] for j in range(len(keep))]

    def forward_whole(self, seqs: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        ids, mask = self.pad(seqs)
        kwargs = {"use_cache": False} if self.causal else {}
        out = self.backbone_forward(ids, mask, positions, **kwargs)
        return self.gather(out.last_hidden_state, positions)

    def forward_prefixes(self, prefixes: list[list[int]], inside: list[list[int]]
                         ) -> tuple[list[KV], list[torch.Tensor]]:
        """One forward of ``prefixes``: each row's keys/values (cut to its own length) and its hidden states at
        ``inside[r]`` (the positions read within the prefix)."""
        ids, mask = self.pad(prefixes)
        out = self.backbone_forward(ids, mask, inside, use_cache=True)
        layers = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        kv = [[(k[row: row + 1, :, :len(p)], v[row: row + 1, :, :len(p)]) for k, v in layers]
              for row, p in enumerate(prefixes)]
        return kv, self.gather(out.last_hidden_state, inside)

    def forward_suffixes(self, suffixes: list[list[int]], groups: list[int], prefix_lens: list[int],
                         caches: dict[int, KV], after: list[list[int]]) -> list[torch.Tensor]:
        """One forward of ``suffixes``, row ``r`` continuing group ``groups[r]``'s prefix (``caches``, of
        ``prefix_lens[r]`` tokens); the hidden states at ``after[r]`` (positions within the suffix)."""
        ids, mask = self.pad(suffixes)
        position_ids = (torch.as_tensor(prefix_lens).unsqueeze(1) + torch.arange(ids.shape[1]).unsqueeze(0)
                        ).to(self.device)
        path = self._suffix_in_place if self.attend_in_engine else self._suffix_with_copies
        out = path(suffixes, groups, prefix_lens, caches, after, ids, mask, position_ids)
        return self.gather(out.last_hidden_state, after)

    def _suffix_in_place(self, suffixes, groups, prefix_lens, caches, after, ids, mask, position_ids):
        """Right-padded suffixes with no mask and no cache: each layer attends within each row's suffix (causal) and
        over its group's prefix keys/values as the prefix pass left them (:mod:`.attention`)."""
        width = ids.shape[1]
        members: dict[int, list[int]] = {}
        for r, (k, suffix) in enumerate(zip(groups, suffixes)):
            members.setdefault(k, []).extend(r * width + j for j in range(len(suffix)))
        query_rows = [torch.as_tensor(flat, dtype=torch.long, device=self.device) for flat in members.values()]
        return self.backbone_forward(ids, mask, after, prefix_kv=[caches[k] for k in members],
                                     query_rows=query_rows, position_ids=position_ids, use_cache=False)

    def _suffix_with_copies(self, suffixes, groups, prefix_lens, caches, after, ids, suffix_mask, position_ids):
        """Each row gets its group's cache, left-padded to the longest prefix of the batch, then one masked forward of
        the suffixes against it: works with any backbone taking a ``DynamicCache``. Left, so that every key sits as
        far before each query of its row as in the sequence itself: transformers draws a sliding window by cache
        index, and a row whose shorter prefix was padded on its right had its first tokens fall out of a window
        (Gemma-2, GPT-OSS, Gemma-3) that the sequence itself fits in."""
        group_keys = sorted(set(groups))
        slot = {k: j for j, k in enumerate(group_keys)}
        pmax = max(prefix_lens)
        pick = torch.as_tensor([slot[k] for k in groups], dtype=torch.long)
        layers = []
        for layer in range(len(caches[group_keys[0]])):
            ks, vs = [], []
            for k in group_keys:
                key, value = caches[k][layer]
                pad = pmax - key.shape[-2]
                ks.append(F.pad(key, (0, 0, pad, 0)) if pad else key)
                vs.append(F.pad(value, (0, 0, pad, 0)) if pad else value)
            ks, vs = torch.cat(ks), torch.cat(vs)
            layers.append((ks.index_select(0, pick.to(ks.device)), vs.index_select(0, pick.to(vs.device))))

        prefix_mask = (torch.arange(pmax).unsqueeze(0) >= pmax - torch.as_tensor(prefix_lens).unsqueeze(1)).long()
        mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        return self.backbone_forward(ids, mask, after, position_ids=position_ids,
                                     **{cache_keyword(self.backbone): DynamicCache(ddp_cache_data=layers)},
                                     use_cache=False)

    @staticmethod
    def release_memory() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
