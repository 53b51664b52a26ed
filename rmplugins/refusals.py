"""Why a sample has no reward, as a word a program can branch on.

A reward model refuses some samples: a judge that wrote no verdict, a conversation longer than it reads whole, one
it cannot read at all. People read the reason; a trainer or an environment server needs to group and count them
(NeMo-Gym's ``failure_kind``, a metric label) and must not parse prose that may be reworded. Each refusal is raised
where it happens as an :class:`Unscorable` carrying one of the few kinds below, and the server sends the kind beside
the reason (``error_kinds`` in a partial answer, ``kind`` in a 422 or 408 body).
"""

from __future__ import annotations

TOO_LONG = "too_long"                  # longer than the model reads whole (max_length); a cut would score another text
UNREADABLE = "unreadable"              # the model cannot read this conversation (its template, roles, markers)
NO_VERDICT = "no_verdict"              # a judge gave no verdict (no group comparison decided, for a group reward)
GROUP_INCOMPLETE = "group_incomplete"  # a group-relative reward whose group never came (--group-timeout)
REJECTED = "rejected"                  # any other refusal by the model

KINDS = (TOO_LONG, UNREADABLE, NO_VERDICT, GROUP_INCOMPLETE, REJECTED)


class Unscorable(ValueError):
    """A sample the model refuses, with its reason (the message) and its :data:`KINDS` entry (``kind``)."""

    def __init__(self, reason: str, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown refusal kind {kind!r}; one of {KINDS}")
        super().__init__(reason)
        self.kind = kind

    def __reduce__(self):  # pickled as it was made (a ValueError pickles its message alone): across processes too
        return type(self), (str(self), self.kind)


def kind_of(err: BaseException, default: str = REJECTED) -> str:
    """The kind of a refusal: its own where it was raised as :class:`Unscorable`, else ``default``."""
    return err.kind if isinstance(err, Unscorable) else default
