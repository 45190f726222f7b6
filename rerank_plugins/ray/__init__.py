"""Past one machine with Ray: bulk scoring with Ray Data, online serving with Ray Serve.

::

    import ray
    from rerank_plugins.ray import score_dataset

    ds = ray.data.read_parquet("s3://bucket/pairs/")           # columns: id, query, text
    scored = score_dataset(ds, model="Alibaba-NLP/gte-reranker-modernbert-base",
                           num_gpus=1, concurrency=8)            # 8 actors, one GPU each
    scored.write_parquet("s3://bucket/scored/")                 # + score, tokens, truncated, error

Each actor loads one scorer once (weights are not reloaded per batch) and scores the
batches Ray Data hands it with :func:`rerank_plugins.bulk.score_table`, the same code the
single-machine ``rerank-plugins score`` runs. A remote endpoint works too
(``model="https://..."``): each actor holds one client, so ``concurrency`` bounds the
requests in flight.

:func:`serve_app` is a Ray Serve application whose replicas each run the app and
micro-batcher of ``rerank-plugins serve`` (:func:`rerank_plugins.serve.create_app`)::

    from ray import serve
    from rerank_plugins.ray import serve_app

    serve.run(serve_app(model="Alibaba-NLP/gte-reranker-modernbert-base", num_replicas=4,
                        ray_actor_options={"num_gpus": 1}))     # /v1/rerank, /rerank, ...

Needs the ``ray`` extra; ``import rerank_plugins`` does not import ray.
"""

from __future__ import annotations

from rerank_plugins.ray.data import score_dataset, score_file_on_ray
from rerank_plugins.ray.serve import serve_app, serve_on_ray

__all__ = ["score_dataset", "score_file_on_ray", "serve_app", "serve_on_ray"]
