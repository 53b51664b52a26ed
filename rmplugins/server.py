"""``rmplugins.server``: the reward server's public names, kept at their first home. The code lives in
:mod:`rmplugins.serving`."""

from .serving import BackgroundServer, RequestError, Sample, create_app, reference_from_label  # noqa: F401
