"""Request complexity estimation and the cost/quality choice (see docs/routing.md).

Hot-path use (numpy + pure Python, no Django, well under a millisecond)::

    from routing.complexity import Candidate, RequestFeatures, choose, estimate

    features = RequestFeatures.from_messages(messages, tools=tools, response_format=fmt)
    est = estimate(features)
    ranked = choose(candidates, est, willingness=0.5)
"""

from routing.complexity.estimator import (
    TIER_PRIORS,
    Candidate,
    Estimate,
    Needs,
    Ranked,
    choose,
    estimate,
)
from routing.complexity.features import RequestFeatures
from routing.complexity.model import ArtefactError, ComplexityModel, default_model, load_model

__all__ = [
    "TIER_PRIORS",
    "ArtefactError",
    "Candidate",
    "ComplexityModel",
    "Estimate",
    "Needs",
    "Ranked",
    "RequestFeatures",
    "choose",
    "default_model",
    "estimate",
    "load_model",
]
