"""Answer queries from a release bundle: ``semcode search`` (one query, in a terminal) and ``semcode serve``
(an HTTP JSON API). ``searcher`` loads a bundle and searches it with ONNX Runtime, tokenizers and FAISS
only; nothing on the query path imports torch. ``app`` is the FastAPI service (imported only by serve).
"""
