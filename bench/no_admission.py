"""The production ASGI app with billing's admit / settle steps taken out again: the "before"
row of ``bench/gateway_overhead.py``, so one run shows what admission and settlement add per
request. For benchmarks only; the product always runs with them (``GatewayConfig.ready``)."""

from gateway import pipeline
from megarouter.asgi import application

pipeline.STEPS.admit = pipeline.admit_all
pipeline.STEPS.settle = pipeline.settle_record

__all__ = ["application"]
