"""``bert-onnx serve``: an HTTP embedding server over one ``Encoder`` (extra ``[serve]``: Starlette, uvicorn,
prometheus-client).

- :mod:`~bert_onnx.serve.batcher`: the dynamic batcher (no HTTP; usable and testable on its own)
- :mod:`~bert_onnx.serve.schema`: request bodies checked into values, or 4xx errors naming the problem
- :mod:`~bert_onnx.serve.app`: the routes; :mod:`~bert_onnx.serve.metrics`: Prometheus metrics
- :mod:`~bert_onnx.serve.server`: binding and graceful shutdown under uvicorn

The runtime (:mod:`bert_onnx.runtime`) never imports this package. See docs/serve.md.
"""
